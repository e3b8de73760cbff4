// imgstore-bench: the timed operations (experiments.cpp). Each returns one run's seconds;
// opening stores and building loaders stays outside the timing unless the tutorial timed it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench.hpp"

namespace imgstore::bench {

// 0..n-1, or a seeded permutation of it (the same for every format and run).
std::vector<std::uint64_t> read_order(std::uint64_t n, bool shuffled, std::uint64_t seed);

double time_store_one(const Variant& v, const fs::path& path, const ImageBatch& data);
double time_store_many(const Variant& v, const fs::path& path, const ImageBatch& images,
                       const std::vector<std::string>& class_names);
// Open + read one record (as the tutorial's read_single_*).
double time_read_one(const fs::path& path, std::uint64_t index);
// Open + read every record of `order` into memory on one thread.
double time_read_many(const fs::path& path, const std::vector<std::uint64_t>& order);
// Sequential read of every file of the store by `threads` threads (read_floor); bytes receives
// what was read.
double time_seqread(const fs::path& store, unsigned threads, std::uint64_t& bytes);
// memcpy of data's images in `order` into batch buffers, `threads` threads (gather_run of
// bench/common/limits.hpp).
double time_gather(const ImageBatch& data, const std::vector<std::uint64_t>& order,
                   std::size_t batch, unsigned threads);
// PNG files of data's first n images (not timed).
std::vector<std::vector<std::uint8_t>> encode_pngs(const ImageBatch& data, std::size_t n, int level);
// The first min(n, kDecodeLimitSample) of `pngs`: what the decode limit is timed on.
constexpr std::size_t kDecodeLimitSample = 2000;
std::vector<std::vector<std::uint8_t>> decode_sample(const std::vector<std::vector<std::uint8_t>>& pngs,
                                                     std::size_t n);
// One thread's seconds to decode n PNGs with the fastest full decoder (png_decode_limit of
// bench/common/limits.hpp on `sample`, scaled to n); decoder receives its name.
double time_decode_limit(const std::vector<std::vector<std::uint8_t>>& sample, std::size_t n,
                         const Shape& shape, std::string& decoder);
// One shuffled epoch; images receives the count delivered. With time_open, opening the store
// is timed too: a cold epoch must count it, since opening an LMDB store walks its leaf pages,
// and the disk's read-around of those faults brings in most of the store before the epoch.
double time_epoch_prefetch(const fs::path& store, std::size_t batch, unsigned threads,
                           std::uint64_t seed, std::uint64_t epoch, bool time_open,
                           std::uint64_t& images);
double time_epoch_stock(const fs::path& store, std::size_t batch, unsigned threads,
                        bool time_open, std::uint64_t& images);

}  // namespace imgstore::bench
