// The examples' local launcher for data-parallel runs: starts N ranks of the running program
// (fork and exec of /proc/self/exe with --rank r --world-size N, MASTER_ADDR/MASTER_PORT in the
// environment, as torchrun does), passes SIGINT/SIGTERM on to them, and takes every rank down
// when one fails. Header-only; POSIX (Linux).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "imgstore/error.hpp"

extern char** environ;

namespace imgstore::examples {

// A strict non-negative integer from an environment variable, or `fallback` when unset.
inline long env_int(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  if (errno || *end || x < 0 || x > 1000000) {
    throw UsageError(fmt::format("environment variable {}='{}' is not a valid count", name, v));
  }
  return x;
}

inline std::string env_str(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// A port free right now on every interface (the kernel picks it); rank 0 binds it moments later.
inline std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw IoError(fmt::format("cannot create a socket: {}", std::strerror(errno)));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  sa.sin_port = 0;
  socklen_t len = sizeof sa;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw IoError(fmt::format("cannot find a free port: {}", std::strerror(err)));
  }
  ::close(fd);
  return ntohs(sa.sin_port);
}



namespace launcher_detail {
inline volatile sig_atomic_t g_signal = 0;
inline void on_signal(int sig) { g_signal = sig; }
}  // namespace launcher_detail

// Starts n ranks of this very program with our arguments minus --nproc, plus --rank r
// --world-size n, and waits for them. Returns the first failing rank's exit code (128 + signal
// for a killed one; 130 after SIGINT/SIGTERM reached us), 0 when all succeed.
inline int launch_ranks(int n, int argc, char** argv, const std::string& addr,
                        const std::string& port) {
  using launcher_detail::g_signal;
  const std::string program = std::filesystem::path(argv[0]).filename().string();
  // The ranks' command line: ours without --nproc, plus --rank/--world-size.
  std::vector<std::string> base;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--nproc") { ++i; continue; }
    if (arg.rfind("--nproc=", 0) == 0) continue;
    base.push_back(arg);
  }
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const auto key = kv.substr(0, kv.find('='));
    if (key != "MASTER_ADDR" && key != "MASTER_PORT" && key != "RANK" && key != "WORLD_SIZE" &&
        key != "LOCAL_RANK") {
      env.push_back(kv);
    }
  }
  struct sigaction sa{};
  sa.sa_handler = launcher_detail::on_signal;  // no SA_RESTART: waitpid returns so the signal is passed on
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::fflush(nullptr);
  std::map<pid_t, int> children;
  for (int r = 0; r < n; ++r) {
    std::vector<std::string> args{argv[0]};
    args.insert(args.end(), base.begin(), base.end());
    for (const std::string& x : {std::string("--rank"), std::to_string(r), std::string("--world-size"), std::to_string(n)}) args.push_back(x);
    std::vector<std::string> envr = env;
    envr.push_back("MASTER_ADDR=" + addr);
    envr.push_back("MASTER_PORT=" + port);
    envr.push_back("LOCAL_RANK=" + std::to_string(r));
    std::vector<char*> av, ev;
    for (auto& s : args) av.push_back(s.data());
    av.push_back(nullptr);
    for (auto& s : envr) ev.push_back(s.data());
    ev.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int err = errno;
      for (auto& [p, rk] : children) ::kill(p, SIGTERM);
      for (auto& [p, rk] : children) ::waitpid(p, nullptr, 0);
      throw IoError(fmt::format("cannot start rank {}: fork: {}", r, std::strerror(err)));
    }
    if (pid == 0) {
      ::execve("/proc/self/exe", av.data(), ev.data());
      std::fprintf(stderr, "%s: cannot start rank %d: %s\n", program.c_str(), r, std::strerror(errno));
      ::_exit(127);
    }
    children[pid] = r;
  }

  int result = 0;
  bool killed = false;
  while (!children.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) {
        for (auto& [p, rk] : children) ::kill(p, g_signal ? g_signal : SIGTERM);
        if (!result) result = 130;
        continue;
      }
      break;
    }
    const auto it = children.find(pid);
    if (it == children.end()) continue;
    const int r = it->second;
    children.erase(it);
    int code = 0;
    if (WIFEXITED(status)) code = WEXITSTATUS(status);
    else if (WIFSIGNALED(status)) {
      code = 128 + WTERMSIG(status);
      if (!killed) std::cerr << fmt::format("{}: rank {} killed by signal {}\n", program, r, WTERMSIG(status));
    }
    if (code && !killed) {
      if (!result) result = code;
      if (!children.empty()) {
        std::cerr << fmt::format("{}: rank {} exited with {}; stopping the other ranks\n", program, r, code);
      }
      for (auto& [p, rk] : children) ::kill(p, SIGTERM);
      killed = true;
    }
  }
  return result;
}

// Where this process stands in a run: --nproc N starts N ranks here; otherwise --rank and
// --world-size (or torchrun's RANK and WORLD_SIZE) name one rank; neither: one process alone.
struct RankOptions {
  int nproc = 0, rank = -1, world_size = -1;
  std::string master_addr, master_port;  // default: $MASTER_ADDR/$MASTER_PORT
};

inline std::string master_addr(const RankOptions& o) {
  return o.master_addr.empty() ? env_str("MASTER_ADDR", "127.0.0.1") : o.master_addr;
}

inline std::uint16_t master_port(const RankOptions& o) {
  const std::string text = o.master_port.empty() ? env_str("MASTER_PORT", "29500") : o.master_port;
  char* end = nullptr;
  const long port = std::strtol(text.c_str(), &end, 10);
  if (*end || port < 1 || port > 65535) throw UsageError(fmt::format("bad master port '{}'", text));
  return static_cast<std::uint16_t>(port);
}

namespace launcher_detail {
// Runs f(), prefixing the message of an imgstore error with `prefix`, keeping its kind.
template <class F>
void with_prefix(const std::string& prefix, F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    throw UsageError(prefix + e.what());
  } catch (const DataError& e) {
    throw DataError(prefix + e.what());
  } catch (const IoError& e) {
    throw IoError(prefix + e.what());
  }
}
}  // namespace launcher_detail

// Runs this process's part of a data-parallel run. With --nproc N: check_rank(r, N) for every
// rank first (one clear message, nothing started), then N ranks of this program. Otherwise
// run_rank(rank, world) with errors prefixed by the rank.
template <class CheckRank, class RunRank>
int run_distributed(RankOptions o, int argc, char** argv, CheckRank&& check_rank, RunRank&& run_rank) {
  const bool explicit_rank = o.rank >= 0 || o.world_size >= 0;
  if (o.nproc < 0) throw UsageError("--nproc must be at least 1");
  if (o.nproc > 0) {
    if (explicit_rank) throw UsageError("--nproc starts the ranks itself: do not also give --rank or --world-size");
    const int n = o.nproc;
    for (int r = 0; r < n; ++r) launcher_detail::with_prefix(fmt::format("rank {} of {}: ", r, n), [&] { check_rank(r, n); });
    const std::string port = !o.master_port.empty() ? o.master_port
                                                    : env_str("MASTER_PORT", std::to_string(free_port()));
    return launch_ranks(n, argc, argv, master_addr(o), port);
  }
  if (o.rank < 0) o.rank = static_cast<int>(env_int("RANK", -1));
  if (o.world_size < 0) o.world_size = static_cast<int>(env_int("WORLD_SIZE", -1));
  if (o.rank < 0 && o.world_size < 0) {  // plain single process
    o.rank = 0;
    o.world_size = 1;
    if (o.master_port.empty() && !std::getenv("MASTER_PORT")) o.master_port = std::to_string(free_port());
  }
  if (o.rank < 0 || o.world_size < 1) {
    throw UsageError("give both the rank and the world size (--rank/--world-size or RANK/WORLD_SIZE), or --nproc N");
  }
  if (o.rank >= o.world_size) {
    throw UsageError(fmt::format("rank {} is not below the world size {}", o.rank, o.world_size));
  }
  try {
    return run_rank(o);
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("rank {}: {}", o.rank, e.what()));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("rank {}: {}", o.rank, e.what()));
  }
}

}  // namespace imgstore::examples
