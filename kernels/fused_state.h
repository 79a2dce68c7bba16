// The layouts of the fused ops' `state`: one flat acc-dtype buffer that the forward fills and the backward
// reads (docs/kernels.md, "The fused ops"). Plain C++: the CPU kernels, the CUDA kernels and their glue include
// it; csfr/ops/layout.py mirrors each `total` for the fake tensors (a test holds them equal).
//
// CacState, of cac_loss. The accumulated part comes first, so one clear of [0, cleared) readies the buffer:
//   sums [B,K,D]    class sums of the features                        (segment_sum)
//   wsum [B,K,D]    class sums of coef_i (f_i - mu_k)                  (cac_pixel_pass)
//   counts [B,K]    class pixel counts                                 (segment_sum)
//   hinge [B,K]     class sums of max(||f_i - mu_k|| - delta_v, 0)^2    (cac_pixel_pass)
//   wcount [B,K]    class sums of coef_i                               (cac_pixel_pass)
//   flags [2]       a label outside [0, K) and not ignored; a class sum not finite (1 = seen)
//   ticket [1]      blocks of the class part that have finished (read as an unsigned counter)
// then what is written whole:
//   coef [B,N]      per pixel 2 h_i / r_i (0 if within the margin or ignored)
//   a [B,K]         the intra term's direct factor per class, before the 1 / n_intra of the batch
//   g_inter [B,K,D] the inter term's gradient reaching each pixel of a class, before 1 / n_inter
//   row_intra [B,K], row_inter [B,K]   each class's share of its image's terms (summed in a fixed order)
//   present [B]     classes present in each image
//   scale [2]       1 / n_intra, 1 / n_inter: images with >= 1 and >= 2 classes (at least 1)
#pragma once

#include <cstdint>

namespace csfr {

struct CacState {
  int64_t B, D, N, K;

  constexpr int64_t sums() const { return 0; }
  constexpr int64_t wsum() const { return B * K * D; }
  constexpr int64_t counts() const { return 2 * B * K * D; }
  constexpr int64_t hinge() const { return counts() + B * K; }
  constexpr int64_t wcount() const { return hinge() + B * K; }
  constexpr int64_t flags() const { return wcount() + B * K; }
  constexpr int64_t ticket() const { return flags() + 2; }
  constexpr int64_t cleared() const { return ticket() + 1; }
  constexpr int64_t coef() const { return cleared(); }
  constexpr int64_t a() const { return coef() + B * N; }
  constexpr int64_t g_inter() const { return a() + B * K; }
  constexpr int64_t row_intra() const { return g_inter() + B * K * D; }
  constexpr int64_t row_inter() const { return row_intra() + B * K; }
  constexpr int64_t present() const { return row_inter() + B * K; }
  constexpr int64_t scale() const { return present() + B; }
  constexpr int64_t total() const { return scale() + 2; }
};

// CentroidState, of class_centroids, all of it cleared before segment_sum:
//   sums [B,K,D], counts [B,K]; flag [1] (a label outside [0, K) and not ignored); ticket [B] (blocks of
//   each image that have finished, read as unsigned counters: the last one writes that image's means)
struct CentroidState {
  int64_t B, D, K;

  constexpr int64_t sums() const { return 0; }
  constexpr int64_t counts() const { return B * K * D; }
  constexpr int64_t flag() const { return counts() + B * K; }
  constexpr int64_t ticket() const { return flag() + 1; }
  constexpr int64_t total() const { return ticket() + B; }
};

// flags[] entries
constexpr int kFlagBadLabel = 0;
constexpr int kFlagNonFinite = 1;

}  // namespace csfr
