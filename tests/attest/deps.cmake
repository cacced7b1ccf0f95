# veil_attest_tests: the crypto component for test fixtures, OpenSSL for building test certificates.
set(VEIL_TEST_DEPS veil_crypto OpenSSL::Crypto nlohmann_json::nlohmann_json)
