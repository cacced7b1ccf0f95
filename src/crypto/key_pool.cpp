// X25519 ephemeral keys made ahead of time: see x25519_prepare_ephemeral in crypto.h.
#include <unistd.h>

#include <optional>

#include "crypto/crypto.h"

namespace veil::crypto {
namespace {

// One spare pair per thread, remembering the process that made it: a forked child never uses its parent's key.
struct Spare {
  std::optional<X25519KeyPair> pair;
  pid_t pid = 0;
};
thread_local Spare t_spare;

}  // namespace

void x25519_prepare_ephemeral() {
  if (t_spare.pair && t_spare.pid == ::getpid()) return;
  t_spare.pair = x25519_generate();
  t_spare.pid = ::getpid();
}

X25519KeyPair x25519_take_ephemeral() {
  if (t_spare.pair && t_spare.pid == ::getpid()) {
    X25519KeyPair kp = std::move(*t_spare.pair);
    t_spare.pair.reset();  // handed out exactly once
    return kp;
  }
  t_spare.pair.reset();
  return x25519_generate();
}

}  // namespace veil::crypto
