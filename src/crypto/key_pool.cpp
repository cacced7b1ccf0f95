// X25519 ephemeral keys made ahead of time: see x25519_take_ephemeral in crypto.h.
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <openssl/crypto.h>

#include "crypto/crypto.h"

namespace veil::crypto {
namespace {

// Keeps up to kSpare fresh key pairs, refilled by one background thread that sleeps while the pool is full. Each
// pair is handed out once and remembers the process that made it, so a forked child never reuses its parent's key.
class EphemeralPool {
 public:
  static constexpr size_t kSpare = 2;

  // OpenSSL is initialised before the worker starts, so its exit-time cleanup is registered before this pool's
  // destructor and therefore runs after it: the worker is joined while the library is still whole.
  EphemeralPool()
      : openssl_ready_(OPENSSL_init_crypto(0, nullptr) == 1), worker_([this](std::stop_token stop) { refill(stop); }) {}
  ~EphemeralPool() {
    worker_.request_stop();
    {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with the worker's wait: no lost wake-up
    }
    cv_.notify_all();
  }

  X25519KeyPair take() {
    const pid_t self = ::getpid();
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (!ready_.empty()) {
        Entry e = std::move(ready_.front());
        ready_.pop_front();
        if (e.pid == self) {
          cv_.notify_one();
          return std::move(e.pair);
        }
      }
      cv_.notify_one();
    }
    return x25519_generate();  // none ready (first use, a burst, or a forked child): make one now
  }

 private:
  struct Entry {
    X25519KeyPair pair;
    pid_t pid;
  };

  void refill(std::stop_token stop) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop.stop_requested()) {
      if (ready_.size() >= kSpare) {
        cv_.wait(lock, [&] { return stop.stop_requested() || ready_.size() < kSpare; });
        continue;
      }
      lock.unlock();
      Entry e{x25519_generate(), ::getpid()};
      lock.lock();
      ready_.push_back(std::move(e));
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> ready_;
  [[maybe_unused]] bool openssl_ready_;  // initialised first (see the constructor)
  std::jthread worker_;  // last member: starts after, and is joined before, the state above is destroyed
};

}  // namespace

X25519KeyPair x25519_take_ephemeral() {
  static EphemeralPool pool;
  return pool.take();
}

}  // namespace veil::crypto
