set(VEIL_TEST_DEPS veil_tokenizer)
