#include "server/ratls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

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
  if (!oid || !oct ||
      ASN1_OCTET_STRING_set(oct.get(), reinterpret_cast<const unsigned char*>(id.extension_json.data()),
                            static_cast<int>(id.extension_json.size())) != 1)
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
  if (idx < 0) return make_error(ErrorCode::kNotFound, "certificate has no Veil evidence extension ({})", kRaTlsExtensionOid);
  X509_EXTENSION* ext = X509_get_ext(cert.get(), idx);
  ASN1_OCTET_STRING* data = X509_EXTENSION_get_data(ext);
  info.extension_json.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                             static_cast<size_t>(ASN1_STRING_length(data)));
  return info;
}

}  // namespace veil::server
