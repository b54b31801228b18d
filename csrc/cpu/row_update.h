// The row-update rules shared by every fused backward: the same math as
// fnn_fast/optim.py (SparseRowOptimizer), applied to one row whose gradient has already been
// summed over every occurrence of that row in the batch.
#pragma once
#include <cmath>
#include <cstdint>

namespace fnn_fast::cpu {

enum class Rule : int64_t { kSGD = 0, kAdagrad = 1, kRowwiseAdagrad = 2, kAdam = 3 };

struct UpdateParams {
  Rule rule;
  float lr;
  float weight_decay;
  float eps;
  float beta1;
  float beta2;
  int64_t step;  // 1-based count of updates (Adam's bias correction)
};

// Optimizer state, row-major like the table. state1: Adagrad's sum [rows, dim], row-wise
// Adagrad's sum [rows], Adam's first moment [rows, dim]; state2: Adam's second moment.
struct OptimizerState {
  float* state1;
  float* state2;
};

// w: the row (dim), g: its summed gradient (dim; overwritten). row: the row's index.
inline void update_row(const UpdateParams& p, const OptimizerState& s, int64_t row, float* w,
                       float* g, int64_t dim) {
  if (p.weight_decay != 0.0f) {
    for (int64_t d = 0; d < dim; ++d) g[d] += p.weight_decay * w[d];
  }
  switch (p.rule) {
    case Rule::kSGD:
      for (int64_t d = 0; d < dim; ++d) w[d] -= p.lr * g[d];
      break;
    case Rule::kAdagrad: {
      float* sum = s.state1 + row * dim;
      for (int64_t d = 0; d < dim; ++d) {
        sum[d] += g[d] * g[d];
        w[d] -= p.lr * g[d] / (std::sqrt(sum[d]) + p.eps);
      }
      break;
    }
    case Rule::kRowwiseAdagrad: {
      float mean_square = 0.0f;
      for (int64_t d = 0; d < dim; ++d) mean_square += g[d] * g[d];
      float& sum = s.state1[row];
      sum += mean_square / static_cast<float>(dim);
      const float scale = p.lr / (std::sqrt(sum) + p.eps);
      for (int64_t d = 0; d < dim; ++d) w[d] -= scale * g[d];
      break;
    }
    case Rule::kAdam: {
      float* m = s.state1 + row * dim;
      float* v = s.state2 + row * dim;
      const double t = static_cast<double>(p.step);
      const float step_size = static_cast<float>(
          p.lr * std::sqrt(1.0 - std::pow(static_cast<double>(p.beta2), t)) /
          (1.0 - std::pow(static_cast<double>(p.beta1), t)));
      for (int64_t d = 0; d < dim; ++d) {
        m[d] += (g[d] - m[d]) * (1.0f - p.beta1);
        v[d] += (g[d] * g[d] - v[d]) * (1.0f - p.beta2);
        w[d] -= step_size * m[d] / (std::sqrt(v[d]) + p.eps);
      }
      break;
    }
  }
}

}  // namespace fnn_fast::cpu
