// Drawing samples from a trained JEM for grids, .npz export and FID: SGLD chains from fresh
// noise or given starting points (marginal or class-conditional), and the replay buffer
// grouped by predicted class. Shared by `jem sample` and `jem eval --mode samples|fid`.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "jem/sampler.hpp"
#include "jem/wide_resnet.hpp"

namespace jem {

// Runs `rounds` x `steps` Langevin steps on n chains in place. x: host [n, C, H, W] starting
// points; labels: host [n] (class-conditional chains, E(x, y) = -logits[y]) or empty
// (marginal). Chains go through the sampler `chunk` at a time (chunk <= the sampler's
// max_batch). The noise of chain i in round r is keyed by (seed, r, step, i): the result does
// not depend on `chunk`. `progress(done_chain_rounds, total)` after each chunk and round.
void run_sgld_chains(Backend& backend, SgldSampler& sampler, const WrnConfig& model, int chunk, std::vector<float>& x,
                     std::int64_t n, const std::vector<std::int32_t>& labels, int rounds, int steps, std::uint64_t seed,
                     const std::function<void(std::int64_t, std::int64_t)>& progress = nullptr);

// n starting points U[-1, 1) (the replay buffer's initialisation), deterministic in seed.
std::vector<float> fresh_noise(Backend& backend, int n, int channels, int image_size, std::uint64_t seed);

// Classifies every image of `images` (host [m, C, H, W]) with the model and returns, for each
// class k, the indices of the images predicted as k, most confident first.
std::vector<std::vector<std::int64_t>> group_by_predicted_class(WideResNet& model, const std::vector<float>& images,
                                                                std::int64_t m);

}  // namespace jem
