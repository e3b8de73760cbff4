// RAII over HDF5 ids (after HighFive's H5Object), the one lock every HDF5 call takes, and
// checks that fold the HDF5 error stack into imgstore exceptions.
//
// Debian's libhdf5 is the serial build. We do not rely on it being thread-safe (Debian 12 happens
// to build it with --enable-threadsafe, other systems do not): every call into HDF5 holds
// hdf5_mutex(); it is recursive so that handle destructors can run inside a locked block.
// Since a thread-safe build keeps the error stack and its printing switch per thread, the lock
// also turns automatic error printing off for each thread that takes it.
#pragma once

#include <hdf5.h>

#include <mutex>
#include <string>
#include <utility>

#include "imgstore/error.hpp"

namespace imgstore::detail {

// The process-wide HDF5 lock.
std::recursive_mutex& hdf5_mutex();

// Turns off HDF5's automatic error printing for the calling thread (errors reach the caller as
// exceptions instead). Call with hdf5_mutex() held.
void hdf5_quiet_this_thread();

// Holds hdf5_mutex() for its scope.
class Hdf5Lock {
 public:
  Hdf5Lock() : lock_(hdf5_mutex()) {
    thread_local bool quiet = false;
    if (!quiet) {
      hdf5_quiet_this_thread();
      quiet = true;
    }
  }

 private:
  std::lock_guard<std::recursive_mutex> lock_;
};

// The current HDF5 error stack, most specific entry first, as one line; clears the stack.
// Call it with hdf5_mutex() held, right after the failing call.
std::string hdf5_error_stack();

// Throws E("<what>: <HDF5 error stack>").
template <class E>
[[noreturn]] void throw_hdf5(const std::string& what) {
  std::string stack = hdf5_error_stack();
  throw E(stack.empty() ? what : what + " (HDF5: " + stack + ")");
}

// Returns id, or throws E naming `what` if it is negative (the HDF5 failure convention).
template <class E = DataError, class T>
T check_h5(T id, const std::string& what) {
  if (id < 0) throw_hdf5<E>(what);
  return id;
}

// Owns one HDF5 id and closes it with Close. Move-only; the destructor never throws.
template <herr_t (*Close)(hid_t)>
class H5Handle {
 public:
  H5Handle() = default;
  explicit H5Handle(hid_t id) : id_(id) {}
  ~H5Handle() { reset(); }
  H5Handle(H5Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)) {}
  H5Handle& operator=(H5Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;

  hid_t get() const { return id_; }
  explicit operator bool() const { return id_ >= 0; }

  // Closes quietly (errors ignored): for unwinding.
  void reset() noexcept {
    if (id_ < 0) return;
    Hdf5Lock lock;
    Close(id_);
    id_ = H5I_INVALID_HID;
  }
  // Closes and throws E naming `what` on failure (closing a file flushes it, which can fail).
  template <class E = IoError>
  void close(const std::string& what) {
    if (id_ < 0) return;
    Hdf5Lock lock;
    hid_t id = std::exchange(id_, H5I_INVALID_HID);
    if (Close(id) < 0) throw_hdf5<E>(what);
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

using H5File = H5Handle<H5Fclose>;
using H5Dataset = H5Handle<H5Dclose>;
using H5Space = H5Handle<H5Sclose>;
using H5Type = H5Handle<H5Tclose>;  // only for types we own (H5Tcopy, H5Dget_type), never H5T_*
using H5Plist = H5Handle<H5Pclose>;
using H5Attr = H5Handle<H5Aclose>;
using H5Group = H5Handle<H5Gclose>;

// "uint8", "int64 big-endian", "float32", "string", ... for error messages.
std::string describe_h5_type(hid_t type);

}  // namespace imgstore::detail
