# Compiler flags shared by every Veil target (applied through the veil_flags interface target).
add_library(veil_flags INTERFACE)
target_compile_options(veil_flags INTERFACE -Wall -Wextra -Wno-unused-parameter)
# GCC 12 reports false -Wrestrict/-Wstringop-overflow positives inside libstdc++ at -O3 (GCC bug 105329).
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  target_compile_options(veil_flags INTERFACE -Wno-restrict -Wno-stringop-overflow)
endif()
if(VEIL_WERROR)
  target_compile_options(veil_flags INTERFACE -Werror)
endif()
if(VEIL_SANITIZE OR VEIL_FUZZ)
  set(_san "-fsanitize=address,undefined")
  if(VEIL_FUZZ)
    set(_san "-fsanitize=address,undefined,fuzzer-no-link")
  endif()
  add_compile_options(${_san} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
  # Tests link without libFuzzer: the coverage callbacks come from the sanitizer runtime.
endif()

# Helper: veil_component(NAME SOURCES... DEPS ...) defines static library veil_NAME.
function(veil_component name)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB _srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  if(NOT _srcs)  # a component whose sources are not written yet: headers only
    add_library(veil_${name} INTERFACE)
    target_include_directories(veil_${name} INTERFACE ${CMAKE_SOURCE_DIR}/src)
    target_link_libraries(veil_${name} INTERFACE veil_flags ${ARG_DEPS})
    return()
  endif()
  add_library(veil_${name} STATIC ${_srcs})
  target_include_directories(veil_${name} PUBLIC ${CMAKE_SOURCE_DIR}/src)
  target_link_libraries(veil_${name} PUBLIC veil_flags ${ARG_DEPS})
endfunction()

# veil_cold_code(TARGET): code that is not on an inference or crypto hot path (the command-line front end, the HTTP
# and attestation parsers, test and fuzz drivers) compiles at -O1 in optimised builds, and at -O0 in the sanitizer
# build. It runs the same; it builds much faster (CLI11, Beast and GoogleTest are header-heavy, and ASan makes -O1
# of them about 3x slower to compile than -O0). Release builds keep the server and parsers at full optimisation
# (veil_cold_code_sanitizer_only); hot code (kernels, engine, crypto, channel, sealed) keeps the build's level.
function(veil_cold_code target)
  if(VEIL_SANITIZE OR VEIL_FUZZ)
    target_compile_options(${target} PRIVATE -O0)
  elseif(CMAKE_BUILD_TYPE MATCHES "^(Release|RelWithDebInfo)$")
    target_compile_options(${target} PRIVATE -O1)
  endif()
endfunction()
function(veil_cold_code_sanitizer_only target)
  if(VEIL_SANITIZE OR VEIL_FUZZ)
    target_compile_options(${target} PRIVATE -O0)
  endif()
endfunction()
