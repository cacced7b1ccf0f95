# tests/cli: end-to-end tests run the `veil` executable; build it first and tell the tests where it is.
add_dependencies(${_t} veil)
target_compile_definitions(${_t} PRIVATE VEIL_BIN="$<TARGET_FILE:veil>")
# tests/CMakeLists.txt links veil_<folder> whenever src/<folder>/CMakeLists.txt exists; src/cli builds the
# executable and no library, so veil_cli would be a bare "-lveil_cli". Until that check becomes
# `if(NOT TARGET veil_${child})`, veil_cli is an interface library that is just veil_core.
if(NOT TARGET veil_cli)
  add_library(veil_cli INTERFACE)
  target_link_libraries(veil_cli INTERFACE veil_core)
endif()
