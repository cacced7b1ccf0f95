# The server tests use OpenSSL directly for their TLS client, the attest component for evidence checks, and the
# engine and tokenizer for the single-sequence greedy reference; the simulated-TEE set-up from tests/support.
set(VEIL_TEST_DEPS veil_attest veil_test_support veil_engine veil_tokenizer veil_gguf OpenSSL::SSL OpenSSL::Crypto nlohmann_json::nlohmann_json)
