// Move-only RAII handles over the LMDB C API, in the manner of lmdbxx: throwing check
// functions, Txn::commit() nulls the handle before committing (LMDB frees the txn even when
// commit fails), and destructors abort/close without ever throwing. Private to src/: no public
// header includes lmdb.h.
#pragma once

#include <lmdb.h>

#include <cstddef>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "imgstore/error.hpp"

namespace imgstore::detail::lmdb {

// Throws for rc != MDB_SUCCESS: DataError when the database content is at fault, IoError
// when the OS (or a full map) refused. `what` names the store and the operation.
[[noreturn]] inline void throw_error(int rc, const std::string& what) {
  const std::string msg = fmt::format("{}: {}", what, ::mdb_strerror(rc));
  switch (rc) {
    case MDB_CORRUPTED:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_PAGE_NOTFOUND:
    case MDB_INCOMPATIBLE:
    case MDB_BAD_VALSIZE:
      throw DataError(msg);
    default:
      throw IoError(msg);
  }
}

inline void check(int rc, const std::string& what) {
  if (rc != MDB_SUCCESS) throw_error(rc, what);
}

inline MDB_val make_val(const void* data, std::size_t size) {
  MDB_val v;
  v.mv_size = size;
  v.mv_data = const_cast<void*>(data);
  return v;
}

// The move-only ownership the handles below share: one LMDB pointer, freed by `Free` (close
// or abort) at destruction or replacement, never twice.
template <class T, void (*Free)(T*)>
class Owned {
 public:
  Owned() = default;
  explicit Owned(T* p) noexcept : p_(p) {}
  ~Owned() { free(); }
  Owned(Owned&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Owned& operator=(Owned&& o) noexcept {
    if (this != &o) {
      free();
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;

  T* get() const noexcept { return p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 protected:
  void free() noexcept {
    if (p_) Free(std::exchange(p_, nullptr));
  }
  // Gives up ownership without freeing (LMDB frees a committed transaction itself).
  T* take() noexcept { return std::exchange(p_, nullptr); }

 private:
  T* p_ = nullptr;
};

class Env : public Owned<MDB_env, ::mdb_env_close> {
 public:
  using Owned::Owned;
  // Creates an unopened environment handle.
  static Env create(const std::string& what) {
    MDB_env* env = nullptr;
    check(::mdb_env_create(&env), what);
    return Env(env);
  }

  void set_mapsize(std::size_t size, const std::string& what) {
    check(::mdb_env_set_mapsize(get(), size), what);
  }
  void set_maxdbs(unsigned n, const std::string& what) {
    check(::mdb_env_set_maxdbs(get(), n), what);
  }
  void open(const std::string& path, unsigned flags, mdb_mode_t mode, const std::string& what) {
    check(::mdb_env_open(get(), path.c_str(), flags, mode), what);
  }
  void sync(bool force, const std::string& what) { check(::mdb_env_sync(get(), force ? 1 : 0), what); }
  // Closes now. Every transaction on the environment must have ended.
  void close() noexcept { free(); }
};

class Txn : public Owned<MDB_txn, ::mdb_txn_abort> {
 public:
  using Owned::Owned;
  static Txn begin(MDB_env* env, unsigned flags, const std::string& what) {
    MDB_txn* txn = nullptr;
    check(::mdb_txn_begin(env, nullptr, flags, &txn), what);
    return Txn(txn);
  }

  // Commits and returns LMDB's code. The handle is nulled first: LMDB frees the transaction
  // whether or not the commit succeeds, so it must never be aborted afterwards.
  int try_commit() noexcept { return ::mdb_txn_commit(take()); }
  void commit(const std::string& what) { check(try_commit(), what); }
  void abort() noexcept { free(); }
  // Read-only transactions only: release the snapshot but keep the handle for renew().
  void reset() noexcept { ::mdb_txn_reset(get()); }
  void renew(const std::string& what) { check(::mdb_txn_renew(get()), what); }
};

// A database handle. LMDB closes dbi handles with the environment; closing one earlier is
// only safe when no transaction uses it, so this wrapper never closes it.
class Dbi {
 public:
  Dbi() = default;
  // Returns MDB_NOTFOUND / MDB_INCOMPATIBLE etc. instead of throwing, so callers can phrase
  // a missing sub-database as a data error of their own.
  static int try_open(MDB_txn* txn, const char* name, unsigned flags, Dbi& out) noexcept {
    MDB_dbi dbi = 0;
    int rc = ::mdb_dbi_open(txn, name, flags, &dbi);
    if (rc == MDB_SUCCESS) out = Dbi(dbi);
    return rc;
  }
  static Dbi open(MDB_txn* txn, const char* name, unsigned flags, const std::string& what) {
    Dbi dbi;
    check(try_open(txn, name, flags, dbi), what);
    return dbi;
  }
  explicit Dbi(MDB_dbi dbi) noexcept : dbi_(dbi), valid_(true) {}
  Dbi(Dbi&& o) noexcept : dbi_(o.dbi_), valid_(std::exchange(o.valid_, false)) {}
  Dbi& operator=(Dbi&& o) noexcept {
    dbi_ = o.dbi_;
    valid_ = std::exchange(o.valid_, false);
    return *this;
  }
  Dbi(const Dbi&) = delete;
  Dbi& operator=(const Dbi&) = delete;

  MDB_dbi get() const noexcept { return dbi_; }
  explicit operator bool() const noexcept { return valid_; }

  // MDB_SUCCESS or MDB_NOTFOUND; anything else throws.
  bool get(MDB_txn* txn, const MDB_val& key, MDB_val& value, const std::string& what) const {
    MDB_val k = key;
    int rc = ::mdb_get(txn, dbi_, &k, &value);
    if (rc == MDB_NOTFOUND) return false;
    check(rc, what);
    return true;
  }
  // Returns LMDB's code so that MDB_MAP_FULL can be handled by growing the map.
  int try_put(MDB_txn* txn, const MDB_val& key, MDB_val& value, unsigned flags) const noexcept {
    MDB_val k = key;
    return ::mdb_put(txn, dbi_, &k, &value, flags);
  }
  MDB_stat stat(MDB_txn* txn, const std::string& what) const {
    MDB_stat st{};
    check(::mdb_stat(txn, dbi_, &st), what);
    return st;
  }

 private:
  MDB_dbi dbi_ = 0;
  bool valid_ = false;
};

// A cursor. Destroy it before its transaction ends (a write transaction frees its cursors).
class Cursor : public Owned<MDB_cursor, ::mdb_cursor_close> {
 public:
  using Owned::Owned;
  using Owned::get;
  static Cursor open(MDB_txn* txn, const Dbi& dbi, const std::string& what) {
    MDB_cursor* c = nullptr;
    check(::mdb_cursor_open(txn, dbi.get(), &c), what);
    return Cursor(c);
  }

  // False at the end (MDB_NOTFOUND); throws on other errors.
  bool get(MDB_val& key, MDB_val& value, MDB_cursor_op op, const std::string& what) {
    int rc = ::mdb_cursor_get(get(), &key, &value, op);
    if (rc == MDB_NOTFOUND) return false;
    check(rc, what);
    return true;
  }
  void close() noexcept { free(); }
};

}  // namespace imgstore::detail::lmdb
