// Internal constructors for each kind of source; open_source() in source.cpp picks one.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "imgstore/source.hpp"

namespace imgstore::detail {

// CIFAR-10 (data_batch_1..5.bin, test_batch.bin, batches.meta.txt) or
// CIFAR-100 (train.bin, test.bin, fine/coarse_label_names.txt) binary folder.
std::unique_ptr<Source> open_cifar_binary_dir(const std::filesystem::path& dir,
                                              const SourceOptions& options);
// CIFAR-10 (data_batch_1..5, test_batch, batches.meta) or CIFAR-100 (train, test, meta)
// python pickle folder.
std::unique_ptr<Source> open_cifar_pickle_dir(const std::filesystem::path& dir,
                                              const SourceOptions& options);
// cifar-10-binary.tar.gz, cifar-10-python.tar.gz, cifar-100-*.tar.gz, read in place.
std::unique_ptr<Source> open_cifar_archive(const std::filesystem::path& file,
                                           const SourceOptions& options);
// A folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz], or one images file
// (its labels file found beside it).
std::unique_ptr<Source> open_idx(const std::filesystem::path& path);
// "n=1000,h=32,w=32,c=3,classes=10,seed=1,split=train" (the text after "synthetic:").
std::unique_ptr<Source> open_synthetic(const std::string& params);
// Any imgstore store, or a tutorial-layout HDF5 file: one split.
std::unique_ptr<Source> open_store_source(const std::filesystem::path& path);

// An image folder (ImageFolder convention, optional split folders) of JPEG/PNG files.
std::unique_ptr<Source> open_image_folder(const std::filesystem::path& root,
                                          const SourceOptions& options);
// A list file: CSV path,label[,split][,class], paths relative to it.
std::unique_ptr<Source> open_image_list(const std::filesystem::path& csv,
                                        const SourceOptions& options);

}  // namespace imgstore::detail
