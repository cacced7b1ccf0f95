# kbs tests: the simulated-TEE set-up shared with other tests (tests/support).
set(VEIL_TEST_DEPS veil_test_support)
