// The DDP example's communication: a c10d process group over Gloo (TCPStore rendezvous), the
// collectives a training step needs (gradient averaging in one allreduce, BatchNorm statistics,
// rank 0's start state everywhere) and the one collective in which the ranks agree to start.
// Needs Gloo's headers (Debian: libgloo-dev); the including file checks for them.
#pragma once

#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO  // Debian's libtorch is built with Gloo; the header hides it otherwise
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore::examples {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;

  void allreduce(torch::Tensor& t, c10d::ReduceOp op = c10d::ReduceOp::SUM) {
    std::vector<torch::Tensor> v{t};
    c10d::AllreduceOptions o;
    o.reduceOp = op;
    pg->allreduce(v, o)->wait();
  }
  void broadcast(torch::Tensor& t) {
    std::vector<torch::Tensor> v{t};
    pg->broadcast(v)->wait();
  }
  void barrier() { pg->barrier()->wait(); }
};

inline bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

// Meets the other ranks at addr:port (rank 0 serves the TCPStore) and builds the Gloo group.
inline Group connect(const std::string& addr, std::uint16_t port, int rank, int world, double timeout) {
  const auto ms = std::chrono::milliseconds(static_cast<std::int64_t>(timeout * 1000));
  c10d::TCPStoreOptions so;
  so.port = port;
  so.isServer = rank == 0;
  so.numWorkers = static_cast<std::size_t>(world);
  so.waitWorkers = true;
  so.timeout = ms;
  Group g;
  g.store = c10::make_intrusive<c10d::TCPStore>(addr, so);
  auto opts = c10d::ProcessGroupGloo::Options::create(ms);
  // Like torch.distributed: GLOO_SOCKET_IFNAME picks the interface; on one machine loopback.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (is_loopback(addr)) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  opts->threads = 1;  // collectives are waited for at once; more threads only compete for cores
  g.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, rank, world, opts);
  return g;
}

// ---- tensors <-> one flat buffer ---------------------------------------------------------

inline std::vector<torch::Tensor> float_buffers(torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (auto& b : model.buffers()) {
    if (b.is_floating_point()) out.push_back(b);
  }
  return out;
}

// Every parameter and buffer, in order (including BatchNorm's num_batches_tracked).
inline std::vector<torch::Tensor> all_state(torch::nn::Module& model) {
  auto v = model.parameters();
  for (auto& b : model.buffers()) v.push_back(b);
  return v;
}

inline torch::Tensor flatten(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : ts) flat.push_back(t.detach().reshape(-1).to(torch::kFloat64));
  return flat.empty() ? torch::zeros({0}, torch::kFloat64) : torch::cat(flat);
}

inline void unflatten(const torch::Tensor& flat, const std::vector<torch::Tensor>& ts) {
  torch::NoGradGuard no_grad;
  std::int64_t off = 0;
  for (const auto& t : ts) {
    const auto n = t.numel();
    t.copy_(flat.narrow(0, off, n).view(t.sizes()));
    off += n;
  }
}

// Identifies the model's exact bits: every parameter and buffer, in order.
inline std::uint64_t state_hash(torch::nn::Module& model) {
  ContentDigest digest;
  for (const auto& t : all_state(model)) {
    auto c = t.detach().contiguous();
    digest.add(xxh3_64(c.data_ptr(), c.numel() * c.element_size()));
  }
  return digest.value();
}

// ---- collectives of a training step ------------------------------------------------------

// Averages the gradients of every rank: copy into one buffer, one allreduce, copy back.
class GradientAverager {
 public:
  explicit GradientAverager(torch::nn::Module& model) : params_(model.parameters()) {
    std::int64_t n = 0;
    for (const auto& p : params_) n += p.numel();
    flat_ = torch::zeros({n}, torch::kFloat32);
  }

  void operator()(Group& g, int world) {
    torch::NoGradGuard no_grad;
    std::int64_t off = 0;
    for (auto& p : params_) {
      const auto n = p.numel();
      auto slot = flat_.narrow(0, off, n);
      if (p.grad().defined()) slot.copy_(p.grad().reshape(-1));
      else slot.zero_();
      off += n;
    }
    g.allreduce(flat_);
    flat_.div_(static_cast<double>(world));
    off = 0;
    for (auto& p : params_) {
      const auto n = p.numel();
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      p.mutable_grad().view(-1).copy_(flat_.narrow(0, off, n));
      off += n;
    }
  }

 private:
  std::vector<torch::Tensor> params_;
  torch::Tensor flat_;  // one buffer, so each step is one allreduce
};

// BatchNorm statistics are per rank while training (as in DDP); averaging them gives every
// rank the same model for evaluation and at the end.
inline void average_buffers(Group& g, torch::nn::Module& model, int world) {
  auto bufs = float_buffers(model);
  auto flat = flatten(bufs);
  g.allreduce(flat);
  flat.div_(static_cast<double>(world));
  unflatten(flat, bufs);
}

// An identical start: rank 0's parameters and buffers everywhere.
inline void broadcast_state(Group& g, torch::nn::Module& model) {
  auto state = all_state(model);
  auto flat = flatten(state);
  g.broadcast(flat);
  unflatten(flat, state);
}

// ---- agreeing to start -------------------------------------------------------------------

// A rank's setup outcome: exit code 0 (ready), 2 (a usage error) or 1 (anything else).
struct SetupOutcome {
  int code = 0;
  std::string error;
};

template <class F>
SetupOutcome attempt_setup(F&& setup) {
  try {
    setup();
    return {};
  } catch (const UsageError& e) {
    return {2, e.what()};
  } catch (const std::exception& e) {
    return {1, e.what()};
  }
}

// One collective in which every rank learns whether all are ready: the worst setup code, and
// min/max of the steps per epoch and of the configuration hash. Throws this rank's own setup
// error, or a UsageError when the ranks disagree; returns another rank's failing code (after
// saying so as `who`), or 0 when all may train.
inline int agree_to_start(Group& g, const SetupOutcome& own, std::int64_t steps, std::int64_t config,
                          const std::string& who) {
  auto v = torch::tensor({static_cast<std::int64_t>(own.code), steps, -steps, config, -config}, torch::kInt64);
  g.allreduce(v, c10d::ReduceOp::MAX);
  if (own.code == 2) throw UsageError(own.error);
  if (own.code) throw std::runtime_error(own.error);
  if (const auto worst = v[0].item<std::int64_t>()) {
    std::cerr << fmt::format("{}: another rank failed its checks (see its message); not training\n", who);
    return static_cast<int>(worst);
  }
  if (v[1].item<std::int64_t>() != -v[2].item<std::int64_t>()) {
    throw UsageError(fmt::format("ranks disagree on the steps per epoch ({} to {}): every rank "
                                 "must read the same store with the same batch size",
                                 -v[2].item<std::int64_t>(), v[1].item<std::int64_t>()));
  }
  if (v[3].item<std::int64_t>() != -v[4].item<std::int64_t>()) {
    throw UsageError("ranks disagree on the configuration (store contents, seed, batch size, lr, "
                     "epochs or checkpoint): start every rank with the same options");
  }
  return 0;
}

}  // namespace imgstore::examples
