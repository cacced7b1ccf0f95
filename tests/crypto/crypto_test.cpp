#include <gtest/gtest.h>

#include <set>

#include "crypto/crypto.h"

namespace veil::crypto {
namespace {

Bytes H(std::string_view s) { return *from_hex(s); }

TEST(Hash, KnownAnswers) {
  EXPECT_EQ(to_hex(sha256(as_bytes("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(to_hex(sha384(as_bytes("abc"))),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7");
  Hasher h(HashAlg::kSha256);
  h.update(as_bytes("a"));
  h.update(as_bytes("bc"));
  EXPECT_EQ(to_hex(h.finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Hkdf, Rfc5869Case1) {
  Bytes ikm(22, 0x0b);
  Bytes salt = H("000102030405060708090a0b0c");
  Bytes info = H("f0f1f2f3f4f5f6f7f8f9");
  auto prk = hkdf_extract(HashAlg::kSha256, salt, ikm);
  EXPECT_EQ(to_hex(prk.view()), "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
  auto okm = hkdf(HashAlg::kSha256, salt, ikm, info, 42);
  EXPECT_EQ(to_hex(okm.view()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

TEST(Hkdf, Rfc5869Case2LongInputsAndOutput) {
  Bytes ikm, salt, info;
  for (int i = 0x00; i <= 0x4f; ++i) ikm.push_back(static_cast<uint8_t>(i));
  for (int i = 0x60; i <= 0xaf; ++i) salt.push_back(static_cast<uint8_t>(i));
  for (int i = 0xb0; i <= 0xff; ++i) info.push_back(static_cast<uint8_t>(i));
  auto okm = hkdf(HashAlg::kSha256, salt, ikm, info, 82);
  EXPECT_EQ(to_hex(okm.view()),
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09"
            "da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87");
}

TEST(Hkdf, Rfc5869Case3EmptySaltAndInfo) {
  Bytes ikm(22, 0x0b);
  auto prk = hkdf_extract(HashAlg::kSha256, {}, ikm);
  EXPECT_EQ(to_hex(prk.view()), "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04");
  auto okm = hkdf_expand(HashAlg::kSha256, prk.view(), {}, 42);
  EXPECT_EQ(to_hex(okm.view()),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

TEST(Hmac, Rfc4231Case2) {
  EXPECT_EQ(to_hex(hmac(HashAlg::kSha256, as_bytes("Jefe"), as_bytes("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

class AeadTest : public ::testing::TestWithParam<AeadSuite> {};

TEST_P(AeadTest, RoundTripAndTamper) {
  Bytes key = random_bytes(32), nonce = random_bytes(12);
  auto aead = Aead::create(GetParam(), key);
  ASSERT_TRUE(aead.ok());
  Bytes ct, pt;
  ASSERT_TRUE(aead->seal(nonce, as_bytes("hdr"), as_bytes("secret message"), ct).ok());
  ASSERT_EQ(ct.size(), 14u + 16u);
  ASSERT_TRUE(aead->open(nonce, as_bytes("hdr"), ct, pt).ok());
  EXPECT_EQ(as_chars(pt), "secret message");
  EXPECT_EQ(aead->open(nonce, as_bytes("HDR"), ct, pt).error().code(), ErrorCode::kSecurity);
  ct[3] ^= 1;
  EXPECT_EQ(aead->open(nonce, as_bytes("hdr"), ct, pt).error().code(), ErrorCode::kSecurity);
}

INSTANTIATE_TEST_SUITE_P(Suites, AeadTest, ::testing::Values(AeadSuite::kAes256Gcm, AeadSuite::kChaCha20Poly1305));

TEST(Aead, AesGcmKnownAnswer) {
  // NIST GCM test case 13 (256-bit key of zeros, empty plaintext): tag 530f8afbc74536b9a963b4f1c4cb738b.
  auto aead = Aead::create(AeadSuite::kAes256Gcm, Bytes(32, 0));
  Bytes out;
  ASSERT_TRUE(aead->seal(Bytes(12, 0), {}, {}, out).ok());
  EXPECT_EQ(to_hex(out), "530f8afbc74536b9a963b4f1c4cb738b");
}

TEST(X25519, Rfc7748Vector) {
  auto alice = x25519_from_private(H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  EXPECT_EQ(to_hex(alice->public_key), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  auto shared = x25519_shared(alice->private_key.view(),
                              H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
  EXPECT_EQ(to_hex(shared->view()), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
  EXPECT_EQ(x25519_shared(alice->private_key.view(), Bytes(32, 0)).error().code(), ErrorCode::kSecurity);
  // The pair's cached key object gives the same secret, and the same refusal of a low-order peer key.
  ASSERT_TRUE(alice->handle);
  auto via_pair = x25519_shared(*alice, H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
  EXPECT_EQ(to_hex(via_pair->view()), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
  EXPECT_EQ(x25519_shared(*alice, Bytes(32, 0)).error().code(), ErrorCode::kSecurity);
  X25519KeyPair by_hand{SecretBytes(alice->private_key.view()), alice->public_key, nullptr};
  EXPECT_EQ(to_hex(x25519_shared(by_hand, H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))->view()),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
}

TEST(X25519, EphemeralKeysAreFreshAndWork) {
  // Takes with and without a prepared spare: each pair is distinct, consistent and agrees with a peer.
  std::set<std::string> seen;
  for (int i = 0; i < 8; ++i) {
    if (i % 2 == 0) x25519_prepare_ephemeral();
    X25519KeyPair a = x25519_take_ephemeral();
    X25519KeyPair b = x25519_take_ephemeral();
    ASSERT_TRUE(a.handle);
    EXPECT_TRUE(seen.insert(to_hex(a.public_key)).second);
    EXPECT_TRUE(seen.insert(to_hex(b.public_key)).second);
    auto again = x25519_from_private(a.private_key.view());
    EXPECT_EQ(again->public_key, a.public_key);
    auto ab = x25519_shared(a, b.public_key);
    auto ba = x25519_shared(b, a.public_key);
    ASSERT_TRUE(ab.ok() && ba.ok());
    EXPECT_TRUE(ct_equal(ab->view(), ba->view()));
  }
}

TEST(Ed25519, Rfc8032Test1) {
  auto kp = ed25519_from_seed(H("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
  EXPECT_EQ(to_hex(kp->public_key), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  auto sig = ed25519_sign(kp->seed.view(), {});
  EXPECT_EQ(to_hex(*sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
            "d25bf5f0595bbe24655141438e7a100b");
  EXPECT_TRUE(ed25519_verify(kp->public_key, {}, *sig));
  EXPECT_FALSE(ed25519_verify(kp->public_key, as_bytes("x"), *sig));
  // Signing with the pair's cached key object is the same deterministic signature.
  ASSERT_TRUE(kp->handle);
  auto sig2 = ed25519_sign(*kp, {});
  EXPECT_EQ(*sig2, *sig);
}

// The scalar 1 gives the generator: the P-256 point of SEC 2 / FIPS 186-4 D.1.2.3.
TEST(Ecdsa, P256PrivateKeyOneIsTheGenerator) {
  Bytes one(32, 0);
  one[31] = 1;
  auto kp = ec_from_private(EcCurve::kP256, one);
  ASSERT_TRUE(kp.ok()) << kp.error().message();
  EXPECT_EQ(to_hex(kp->public_key),
            "04" "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
            "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
  EXPECT_FALSE(ec_from_private(EcCurve::kP256, Bytes(32, 0)).ok());     // 0 is not a scalar
  EXPECT_FALSE(ec_from_private(EcCurve::kP256, Bytes(32, 0xff)).ok());  // above the group order
  EXPECT_FALSE(ec_from_private(EcCurve::kP256, Bytes(31, 1)).ok());     // wrong size
}

class EcdsaCurves : public ::testing::TestWithParam<EcCurve> {};

// Sign with the loaded key, verify (twice: the second uses the cached public key), refuse a changed digest, a
// changed signature and another key; s is always in the lower half of the order.
TEST_P(EcdsaCurves, SignVerifyRoundTripLowS) {
  const EcCurve curve = GetParam();
  const size_t n = ec_curve_bytes(curve);
  auto kp = ec_derive(curve, as_bytes("test input key material"), "veil-test/ecdsa");
  auto same = ec_derive(curve, as_bytes("test input key material"), "veil-test/ecdsa");
  EXPECT_EQ(kp.public_key, same.public_key);  // derivation is deterministic
  ASSERT_EQ(kp.public_key.size(), 2 * n + 1);
  auto other = ec_generate(curve);
  Bytes digest(n, 0x5a);
  for (int i = 0; i < 8; ++i) {
    digest[0] = static_cast<uint8_t>(i);
    auto sig = ecdsa_sign_digest(kp, digest);
    ASSERT_TRUE(sig.ok()) << sig.error().message();
    ASSERT_EQ(sig->size(), 2 * n);
    const ByteView r = ByteView(*sig).first(n), s = ByteView(*sig).subspan(n);
    EXPECT_LT(s[0], 0x80) << "high-S signature";
    EXPECT_TRUE(ecdsa_verify_digest(curve, kp.public_key, digest, r, s).ok());
    EXPECT_TRUE(ecdsa_verify_digest(curve, ByteView(kp.public_key).subspan(1), digest, r, s).ok());  // raw X || Y
    EXPECT_FALSE(ecdsa_verify_digest(curve, other.public_key, digest, r, s).ok());
    Bytes changed = digest;
    changed[1] ^= 1;
    EXPECT_FALSE(ecdsa_verify_digest(curve, kp.public_key, changed, r, s).ok());
    Bytes bad_s(s.begin(), s.end());
    bad_s[n - 1] ^= 1;
    EXPECT_FALSE(ecdsa_verify_digest(curve, kp.public_key, digest, r, bad_s).ok());
  }
  // A point that is not on the curve is refused, not cached.
  Bytes off = kp.public_key;
  off[2 * n] ^= 1;
  auto sig = ecdsa_sign_digest(kp, digest);
  EXPECT_FALSE(ecdsa_verify_digest(curve, off, digest, ByteView(*sig).first(n), ByteView(*sig).subspan(n)).ok());
  EXPECT_FALSE(ecdsa_sign_digest(EcKeyPair{}, digest).ok());  // a key that was not loaded
}

INSTANTIATE_TEST_SUITE_P(All, EcdsaCurves, ::testing::Values(EcCurve::kP256, EcCurve::kP384, EcCurve::kSecp256k1),
                         [](const auto& info) {
                           return std::string(info.param == EcCurve::kP256   ? "P256"
                                              : info.param == EcCurve::kP384 ? "P384"
                                                                             : "secp256k1");
                         });

}  // namespace
}  // namespace veil::crypto
