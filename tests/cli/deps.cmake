# tests/cli: end-to-end tests run the `veil` executable; build it first and tell the tests where it is.
add_dependencies(${_t} veil)
target_compile_definitions(${_t} PRIVATE VEIL_BIN="$<TARGET_FILE:veil>")
