// Errors thrown by imgstore. Every message names the file, the record or key, and what is wrong:
//   corrupt record in 'train.lmdb' key '00012345': payload is 3071 bytes, expected 3072
#pragma once

#include <stdexcept>
#include <string>

namespace imgstore {

// Base of every imgstore exception.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The input bytes are wrong: truncated, corrupt, inconsistent, or a format we refuse.
class DataError : public Error {
 public:
  using Error::Error;
};

// The operating system refused: cannot open, read, write, rename, or out of space.
class IoError : public Error {
 public:
  using Error::Error;
};

// The caller asked for something that makes no sense (bad option, index out of range).
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace imgstore
