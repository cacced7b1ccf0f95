#include "server/ratls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <ctime>
#include <nlohmann/json.hpp>

namespace veil::server {
namespace {

struct X509Deleter { void operator()(X509* p) const { X509_free(p); } };
struct PkeyDeleter { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
struct BioDeleter { void operator()(BIO* p) const { BIO_free(p); } };
struct ObjDeleter { void operator()(ASN1_OBJECT* p) const { ASN1_OBJECT_free(p); } };
struct OctDeleter { void operator()(ASN1_OCTET_STRING* p) const { ASN1_OCTET_STRING_free(p); } };
struct ExtDeleter { void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); } };

Error ossl_error(std::string_view what) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  char buf[256] = "unknown";
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  return make_error(ErrorCode::kInternal, "RA-TLS: {}: {}", what, buf);
}

Result<crypto::Sha256Digest> spki_hash(EVP_PKEY* pkey) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(pkey, &der);
  if (n <= 0) return ossl_error("encoding the public key");
  auto h = crypto::sha256(ByteView(der, static_cast<size_t>(n)));
  OPENSSL_free(der);
  return h;
}

std::string base64(ByteView data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(), static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// base64url without padding (RFC 4648 section 5), as CMW JSON records carry their value.
std::string base64url(ByteView data) {
  std::string out = base64(data);
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

Result<std::string> from_base64url(std::string_view text) {
  std::string b64(text);
  for (char& c : b64) {
    if (c == '-') c = '+';
    else if (c == '_') c = '/';
    else if (!std::isalnum(static_cast<unsigned char>(c))) {
      return make_error(ErrorCode::kCorrupt, "RA-TLS CMW record: value is not base64url (character 0x{:02x})",
                        static_cast<unsigned>(static_cast<unsigned char>(c)));
    }
  }
  if (b64.size() % 4 == 1) return make_error(ErrorCode::kCorrupt, "RA-TLS CMW record: value has a base64url length of {}", text.size());
  const size_t pad = (4 - b64.size() % 4) % 4;
  b64.append(pad, '=');
  std::string out(b64.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(b64.data()),
                          static_cast<int>(b64.size()));
  if (n < 0) return make_error(ErrorCode::kCorrupt, "RA-TLS CMW record: value is not base64url");
  out.resize(static_cast<size_t>(n) - pad);  // EVP_DecodeBlock counts the padding as zero bytes
  return out;
}

// extnValue of the evidence extension: DER UTF8String of the JSON CMW record.
Result<Bytes> cmw_extension_value(const std::string& attestation) {
  const std::string record = nlohmann::json::array({kCmwMediaType, base64url(as_bytes(attestation)), kCmwIndicatorEvidence}).dump();
  std::unique_ptr<ASN1_STRING, decltype(&ASN1_STRING_free)> utf8(ASN1_STRING_type_new(V_ASN1_UTF8STRING), ASN1_STRING_free);
  if (!utf8 || ASN1_STRING_set(utf8.get(), record.data(), static_cast<int>(record.size())) != 1) {
    return ossl_error("encoding the CMW record");
  }
  unsigned char* der = nullptr;
  int n = i2d_ASN1_UTF8STRING(utf8.get(), &der);
  if (n <= 0) return ossl_error("encoding the CMW record");
  Bytes out(der, der + n);
  OPENSSL_free(der);
  return out;
}

// The attestation JSON out of an extnValue (the inverse of cmw_extension_value; every field checked).
Result<std::string> attestation_from_cmw(ByteView value) {
  const unsigned char* p = value.data();
  std::unique_ptr<ASN1_STRING, decltype(&ASN1_STRING_free)> utf8(
      d2i_ASN1_UTF8STRING(nullptr, &p, static_cast<long>(value.size())), ASN1_STRING_free);
  if (!utf8 || p != value.data() + value.size()) {
    ERR_clear_error();
    return make_error(ErrorCode::kCorrupt, "RA-TLS evidence extension: value is not one DER UTF8String (a CMW JSON record)");
  }
  const auto* text = reinterpret_cast<const char*>(ASN1_STRING_get0_data(utf8.get()));
  auto record = nlohmann::json::parse(text, text + ASN1_STRING_length(utf8.get()), nullptr, false);
  if (record.is_discarded() || !record.is_array() || record.size() < 2 || record.size() > 3) {
    return make_error(ErrorCode::kCorrupt, "RA-TLS CMW record: not a JSON array [type, value, ind?]");
  }
  if (!record[0].is_string() || record[0].get<std::string>() != kCmwMediaType) {
    return make_error(ErrorCode::kCorrupt, "RA-TLS CMW record: field 0 (type) is not \"{}\"", kCmwMediaType);
  }
  if (!record[1].is_string()) return make_error(ErrorCode::kCorrupt, "RA-TLS CMW record: field 1 (value) is not a string");
  if (record.size() == 3 && (!record[2].is_number_unsigned() || (record[2].get<uint64_t>() & kCmwIndicatorEvidence) == 0)) {
    return make_error(ErrorCode::kCorrupt, "RA-TLS CMW record: field 2 (ind) does not say Evidence");
  }
  return from_base64url(record[1].get<std::string>());
}

Status add_ext(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, ExtDeleter> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) return ossl_error("adding a certificate extension");
  return ok_status();
}

}  // namespace

std::string attestation_json(const attest::Evidence& evidence, const SigningKeys& keys, ByteView nonce,
                             const crypto::Sha256Digest& tls_spki_sha256) {
  nlohmann::json j;
  j["version"] = 1;
  j["binding"] = "veil-report-data-v1";
  j["evidence"] = {{"type", attest::tee_type_name(evidence.type)}, {"data", base64(evidence.data)}};
  j["signing_keys"] = {{"ed25519", to_hex(keys.ed25519.public_key)}, {"secp256k1", to_hex(keys.secp256k1.public_key)}};
  j["tls_spki_sha256"] = to_hex(tls_spki_sha256);
  j["nonce"] = to_hex(nonce);
  j["report_data"] = to_hex(report_data_binding(nonce, tls_spki_sha256, keys));
  return j.dump();
}

Result<TlsIdentity> make_tls_identity(attest::Provider& provider, const SigningKeys& keys,
                                      const std::vector<std::string>& dns_names) {
  std::unique_ptr<EVP_PKEY, PkeyDeleter> pkey(EVP_EC_gen("P-256"));
  if (!pkey) return ossl_error("generating the TLS key");
  TlsIdentity id;
  VEIL_ASSIGN_OR_RETURN(id.spki_sha256, spki_hash(pkey.get()));
  attest::ReportData rd = report_data_binding({}, id.spki_sha256, keys);
  VEIL_ASSIGN_OR_RETURN(auto evidence, provider.quote(rd));
  id.extension_json = attestation_json(evidence, keys, {}, id.spki_sha256);

  std::unique_ptr<X509, X509Deleter> cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) return ossl_error("creating the certificate");
  uint8_t serial[16];
  if (RAND_bytes(serial, sizeof serial) != 1) return ossl_error("serial number");
  serial[0] &= 0x7F;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  ASN1_INTEGER* sn = bn ? BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get())) : nullptr;
  BN_free(bn);
  if (!sn) return ossl_error("serial number");
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 30L * 24 * 3600);
  if (X509_set_pubkey(cert.get(), pkey.get()) != 1) return ossl_error("setting the public key");
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("Veil"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("veil-ra-tls"), -1, -1, 0);
  if (X509_set_issuer_name(cert.get(), name) != 1) return ossl_error("setting the issuer");
  VEIL_TRY(add_ext(cert.get(), NID_basic_constraints, "critical,CA:FALSE"));
  VEIL_TRY(add_ext(cert.get(), NID_key_usage, "critical,digitalSignature"));
  VEIL_TRY(add_ext(cert.get(), NID_ext_key_usage, "serverAuth"));
  std::string san = "IP:127.0.0.1,IP:::1";
  for (const auto& d : dns_names) san += ",DNS:" + d;
  VEIL_TRY(add_ext(cert.get(), NID_subject_alt_name, san.c_str()));

  std::unique_ptr<ASN1_OBJECT, ObjDeleter> oid(OBJ_txt2obj(kRaTlsExtensionOid, 1));
  std::unique_ptr<ASN1_OCTET_STRING, OctDeleter> oct(ASN1_OCTET_STRING_new());
  VEIL_ASSIGN_OR_RETURN(Bytes cmw, cmw_extension_value(id.extension_json));
  if (!oid || !oct || ASN1_OCTET_STRING_set(oct.get(), cmw.data(), static_cast<int>(cmw.size())) != 1)
    return ossl_error("encoding the evidence extension");
  std::unique_ptr<X509_EXTENSION, ExtDeleter> ext(X509_EXTENSION_create_by_OBJ(nullptr, oid.get(), 0, oct.get()));
  if (!ext || X509_add_ext(cert.get(), ext.get(), -1) != 1) return ossl_error("adding the evidence extension");
  if (X509_sign(cert.get(), pkey.get(), EVP_sha256()) <= 0) return ossl_error("signing the certificate");

  unsigned char* der = nullptr;
  int n = i2d_X509(cert.get(), &der);
  if (n <= 0) return ossl_error("encoding the certificate");
  id.cert_der.assign(der, der + n);
  OPENSSL_free(der);

  std::unique_ptr<BIO, BioDeleter> cbio(BIO_new(BIO_s_mem()));
  if (!cbio || PEM_write_bio_X509(cbio.get(), cert.get()) != 1) return ossl_error("PEM certificate");
  char* p = nullptr;
  long len = BIO_get_mem_data(cbio.get(), &p);
  id.cert_pem.assign(p, static_cast<size_t>(len));
  std::unique_ptr<BIO, BioDeleter> kbio(BIO_new(BIO_s_secmem()));
  if (!kbio) kbio.reset(BIO_new(BIO_s_mem()));
  if (!kbio || PEM_write_bio_PrivateKey(kbio.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return ossl_error("PEM key");
  len = BIO_get_mem_data(kbio.get(), &p);
  id.key_pem = SecretBytes(ByteView(reinterpret_cast<const uint8_t*>(p), static_cast<size_t>(len)));
  OPENSSL_cleanse(p, static_cast<size_t>(len));
  return id;
}

Result<RaTlsCertificateInfo> read_ratls_certificate(ByteView cert_der) {
  const unsigned char* p = cert_der.data();
  std::unique_ptr<X509, X509Deleter> cert(d2i_X509(nullptr, &p, static_cast<long>(cert_der.size())));
  if (!cert) {
    ERR_clear_error();
    return make_error(ErrorCode::kCorrupt, "RA-TLS certificate does not parse as DER X.509");
  }
  RaTlsCertificateInfo info;
  EVP_PKEY* pk = X509_get0_pubkey(cert.get());
  if (!pk) return make_error(ErrorCode::kCorrupt, "RA-TLS certificate has no usable public key");
  VEIL_ASSIGN_OR_RETURN(info.spki_sha256, spki_hash(pk));
  std::unique_ptr<ASN1_OBJECT, ObjDeleter> oid(OBJ_txt2obj(kRaTlsExtensionOid, 1));
  int idx = X509_get_ext_by_OBJ(cert.get(), oid.get(), -1);
  if (idx < 0) return make_error(ErrorCode::kNotFound, "certificate has no evidence extension (id-pe-cmw, {})", kRaTlsExtensionOid);
  X509_EXTENSION* ext = X509_get_ext(cert.get(), idx);
  ASN1_OCTET_STRING* data = X509_EXTENSION_get_data(ext);
  VEIL_ASSIGN_OR_RETURN(info.extension_json,
                        attestation_from_cmw(ByteView(ASN1_STRING_get0_data(data), static_cast<size_t>(ASN1_STRING_length(data)))));
  return info;
}

}  // namespace veil::server
