// CPU compositor (render/composite_cpu.py): the same front-to-back blending as render/composite.py (its reference), one tile per
// task, Gaussians of the tile in order and each one's pixel box inside the tile.
//
// Semantics (see composite.py): alpha = min(alpha_max, o exp(-sigma)), sigma = 0.5 (a dx^2 + c dy^2)
// + b dx dy with dx = mean - pixel centre; a pair is skipped when sigma < 0 or alpha < alpha_min; a pixel
// stops before the Gaussian that would bring T to <= t_min; only pixels inside a Gaussian's box (its radii)
// are touched. Per-Gaussian results are written per tile-list entry and summed by the caller, so the
// result does not depend on the number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Box {
  int64_t x0, x1, y0, y1;  // pixel rectangle [x0, x1) x [y0, y1), clipped to the tile
};

// Pixel j is inside the box when its centre j + 0.5 lies within [mean - r, mean + r] (as plan_pairs).
inline Box box_in_tile(double mx, double my, double rx, double ry, int64_t tx0, int64_t ty0, int64_t ts,
                       int64_t width, int64_t height) {
  Box b;
  b.x0 = std::max<int64_t>(static_cast<int64_t>(std::ceil(mx - rx - 0.5)), tx0);
  b.x1 = std::min<int64_t>(static_cast<int64_t>(std::floor(mx + rx - 0.5)) + 1, std::min(tx0 + ts, width));
  b.y0 = std::max<int64_t>(static_cast<int64_t>(std::ceil(my - ry - 0.5)), ty0);
  b.y1 = std::min<int64_t>(static_cast<int64_t>(std::floor(my + ry - 0.5)) + 1, std::min(ty0 + ts, height));
  return b;
}

struct Constants {
  double alpha_max, alpha_min, t_min, t_median;
};

// What both passes read: per Gaussian (means, conics, opacities, features, radii) and the tile lists.
template <typename scalar_t>
struct Scene {
  const scalar_t *means, *conics, *opac, *feats;
  int64_t D;
  const double* radii;
  const int64_t *offsets, *ids;
  int64_t tiles_x, n_tiles, ts, width, height;
};

// One tile-list entry: its Gaussian and that Gaussian's pixel box inside the tile.
struct Entry {
  int64_t g;
  Box box;
  double mx, my, a, b, c, o;
  bool empty() const { return box.x0 >= box.x1 || box.y0 >= box.y1; }
};

template <typename scalar_t>
inline Entry entry_at(const Scene<scalar_t>& s, int64_t e, int64_t tx0, int64_t ty0) {
  Entry en;
  en.g = s.ids[e];
  const int64_t g = en.g;
  en.mx = s.means[2 * g];
  en.my = s.means[2 * g + 1];
  en.box = box_in_tile(en.mx, en.my, s.radii[2 * g], s.radii[2 * g + 1], tx0, ty0, s.ts, s.width, s.height);
  en.a = s.conics[3 * g];
  en.b = s.conics[3 * g + 1];
  en.c = s.conics[3 * g + 2];
  en.o = s.opac[g];
  return en;
}

// alpha of the pair (entry, pixel at mean - centre = dx, dy) and vis = exp(-sigma); alpha < 0: skipped
inline double pair_alpha(const Entry& en, double dx, double dy, const Constants& k, double* vis) {
  const double sigma = 0.5 * (en.a * dx * dx + en.c * dy * dy) + en.b * dx * dy;
  if (sigma < 0.0) return -1.0;
  *vis = std::exp(-sigma);
  const double alpha = std::min(k.alpha_max, en.o * *vis);
  return alpha < k.alpha_min ? -1.0 : alpha;
}

template <typename scalar_t>
void forward_impl(const Scene<scalar_t>& s, bool with_stats, Constants k, scalar_t* out_feat, scalar_t* out_alpha,
                  double* out_tfinal, int64_t* out_median, int64_t* out_max, int32_t* out_last,
                  scalar_t* entry_weight, int64_t* entry_touched) {
  const int64_t D = s.D, ts = s.ts;
  at::parallel_for(0, s.n_tiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t tp = ts * ts;
    std::vector<double> T(tp), acc(tp * std::max<int64_t>(D, 1)), wmax(tp);
    std::vector<char> done(tp);
    std::vector<int64_t> median(tp), maxid(tp);
    std::vector<int32_t> last(tp);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t tx0 = (t % s.tiles_x) * ts, ty0 = (t / s.tiles_x) * ts;
      std::fill(T.begin(), T.end(), 1.0);
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(wmax.begin(), wmax.end(), 0.0);
      std::fill(done.begin(), done.end(), 0);
      std::fill(median.begin(), median.end(), -1);
      std::fill(maxid.begin(), maxid.end(), -1);
      std::fill(last.begin(), last.end(), 0);
      // pixels of the tile outside the image never take part
      const int64_t w_in = std::max<int64_t>(0, std::min(ts, s.width - tx0));
      const int64_t h_in = std::max<int64_t>(0, std::min(ts, s.height - ty0));
      int64_t live = w_in * h_in;
      const int64_t e0 = s.offsets[t], e1 = s.offsets[t + 1];
      for (int64_t e = e0; e < e1 && live > 0; ++e) {
        const Entry en = entry_at(s, e, tx0, ty0);
        if (en.empty()) continue;
        const scalar_t* f = s.feats + en.g * D;
        double w_sum = 0.0;
        int64_t touched = 0;
        for (int64_t py = en.box.y0; py < en.box.y1; ++py) {
          const double dy = en.my - (py + 0.5);
          for (int64_t px = en.box.x0; px < en.box.x1; ++px) {
            const int64_t p = (py - ty0) * ts + (px - tx0);
            if (done[p]) continue;
            double vis;
            const double alpha = pair_alpha(en, en.mx - (px + 0.5), dy, k, &vis);
            if (alpha < 0.0) continue;
            const double t_after = T[p] * (1.0 - alpha);
            if (t_after <= k.t_min) {
              done[p] = 1;
              --live;
              continue;
            }
            const double w = alpha * T[p];
            double* ap = acc.data() + p * D;
            for (int64_t d = 0; d < D; ++d) ap[d] += w * f[d];
            if (T[p] >= k.t_median && t_after < k.t_median) median[p] = en.g;
            if (w > wmax[p]) {  // strictly greater: on ties the front-most Gaussian stays
              wmax[p] = w;
              maxid[p] = en.g;
            }
            w_sum += w;
            ++touched;
            T[p] = t_after;
            last[p] = static_cast<int32_t>(e - e0 + 1);
          }
        }
        if (with_stats) {
          entry_weight[e] = static_cast<scalar_t>(w_sum);
          entry_touched[e] = touched;
        }
      }
      for (int64_t ly = 0; ly < h_in; ++ly) {
        for (int64_t lx = 0; lx < w_in; ++lx) {
          const int64_t p = ly * ts + lx, q = (ty0 + ly) * s.width + (tx0 + lx);
          for (int64_t d = 0; d < D; ++d) out_feat[q * D + d] = static_cast<scalar_t>(acc[p * D + d]);
          out_alpha[q] = static_cast<scalar_t>(1.0 - T[p]);
          out_tfinal[q] = T[p];
          out_median[q] = median[p];
          if (with_stats) out_max[q] = maxid[p];
          out_last[q] = last[p];
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const Scene<scalar_t>& s, Constants k, const double* tfinal, const int32_t* lastv,
                   const scalar_t* grad_feat, const scalar_t* grad_alpha, scalar_t* entry_grad) {
  const int64_t D = s.D, ts = s.ts;
  const int64_t G = D + 6;  // per entry: d features, then x, y, a, b, c, opacity
  at::parallel_for(0, s.n_tiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t tp = ts * ts;
    std::vector<double> T(tp), behind(tp), from_alpha(tp), gpix(tp * std::max<int64_t>(D, 1)), eg(G);
    std::vector<int32_t> last(tp);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t tx0 = (t % s.tiles_x) * ts, ty0 = (t / s.tiles_x) * ts;
      const int64_t w_in = std::max<int64_t>(0, std::min(ts, s.width - tx0));
      const int64_t h_in = std::max<int64_t>(0, std::min(ts, s.height - ty0));
      std::fill(last.begin(), last.end(), 0);
      for (int64_t ly = 0; ly < h_in; ++ly) {
        for (int64_t lx = 0; lx < w_in; ++lx) {
          const int64_t p = ly * ts + lx, q = (ty0 + ly) * s.width + (tx0 + lx);
          T[p] = tfinal[q];
          behind[p] = 0.0;
          // d alpha_out / d a_k = T_final / (1 - a_k): the background's share enters through alpha
          from_alpha[p] = static_cast<double>(grad_alpha[q]) * tfinal[q];
          for (int64_t d = 0; d < D; ++d) gpix[p * D + d] = grad_feat[q * D + d];
          last[p] = lastv[q];
        }
      }
      const int64_t e0 = s.offsets[t], e1 = s.offsets[t + 1];
      for (int64_t e = e1 - 1; e >= e0; --e) {
        const Entry en = entry_at(s, e, tx0, ty0);
        if (en.empty()) continue;
        const scalar_t* f = s.feats + en.g * D;
        const int32_t local = static_cast<int32_t>(e - e0);
        std::fill(eg.begin(), eg.end(), 0.0);
        bool any = false;
        for (int64_t py = en.box.y0; py < en.box.y1; ++py) {
          const double dy = en.my - (py + 0.5);
          for (int64_t px = en.box.x0; px < en.box.x1; ++px) {
            const int64_t p = (py - ty0) * ts + (px - tx0);
            if (local >= last[p]) continue;  // at or behind where this pixel stopped
            const double dx = en.mx - (px + 0.5);
            double vis;
            const double alpha = pair_alpha(en, dx, dy, k, &vis);
            if (alpha < 0.0) continue;
            const double t_before = T[p] / (1.0 - alpha);
            const double w = alpha * t_before;
            const double* gp = gpix.data() + p * D;
            double dot = 0.0;
            for (int64_t d = 0; d < D; ++d) {
              dot += f[d] * gp[d];
              eg[d] += gp[d] * w;
            }
            double d_alpha = t_before * dot + (from_alpha[p] - behind[p]) / (1.0 - alpha);
            if (en.o * vis > k.alpha_max) d_alpha = 0.0;  // the clamp cuts the gradient, as in gsplat
            const double v_sigma = -alpha * d_alpha;
            eg[D] += v_sigma * (en.a * dx + en.b * dy);
            eg[D + 1] += v_sigma * (en.b * dx + en.c * dy);
            eg[D + 2] += 0.5 * v_sigma * dx * dx;
            eg[D + 3] += v_sigma * dx * dy;
            eg[D + 4] += 0.5 * v_sigma * dy * dy;
            eg[D + 5] += vis * d_alpha;
            behind[p] += w * dot;
            T[p] = t_before;
            any = true;
          }
        }
        if (any) {
          for (int64_t j = 0; j < G; ++j) entry_grad[e * G + j] = static_cast<scalar_t>(eg[j]);
        }
      }
    }
  });
}

void check_inputs(const torch::Tensor& means, const torch::Tensor& conics, const torch::Tensor& opac,
                  const torch::Tensor& feats, const torch::Tensor& radii, const torch::Tensor& offsets,
                  const torch::Tensor& ids) {
  for (const auto* x : {&means, &conics, &opac, &feats, &radii, &offsets, &ids}) {
    TORCH_CHECK(x->device().is_cpu() && x->is_contiguous(), "composite_cpu: CPU contiguous tensors only");
  }
  TORCH_CHECK(means.scalar_type() == conics.scalar_type() && means.scalar_type() == opac.scalar_type()
                  && means.scalar_type() == feats.scalar_type(), "composite_cpu: one floating dtype");
  TORCH_CHECK(radii.scalar_type() == torch::kFloat64, "composite_cpu: radii as float64");
  TORCH_CHECK(offsets.scalar_type() == torch::kInt64 && ids.scalar_type() == torch::kInt64,
              "composite_cpu: int64 tile lists");
}

template <typename scalar_t>
Scene<scalar_t> scene_of(const torch::Tensor& means, const torch::Tensor& conics, const torch::Tensor& opac,
                         const torch::Tensor& feats, const torch::Tensor& radii, const torch::Tensor& offsets,
                         const torch::Tensor& ids, int64_t tiles_x, int64_t tiles_y, int64_t ts, int64_t width,
                         int64_t height) {
  return {means.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(),
          feats.data_ptr<scalar_t>(), feats.size(1), radii.data_ptr<double>(), offsets.data_ptr<int64_t>(),
          ids.data_ptr<int64_t>(), tiles_x, tiles_x * tiles_y, ts, width, height};
}

}  // namespace

// Returns feat (H*W, D), alpha (H*W), t_final (H*W, float64), median (H*W), max id (H*W or empty),
// last (H*W int32: entries of the pixel's tile up to its last blended one), and per tile-list entry the
// weight sum and touched-pixel count (empty without stats).
std::vector<torch::Tensor> composite_forward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac,
                                   torch::Tensor feats, torch::Tensor radii, torch::Tensor offsets,
                                   torch::Tensor ids, int64_t tiles_x, int64_t tiles_y, int64_t ts, int64_t width,
                                   int64_t height, bool with_stats, double alpha_max, double alpha_min,
                                   double t_min, double t_median) {
  check_inputs(means, conics, opac, feats, radii, offsets, ids);
  const int64_t D = feats.size(1), P = width * height, E = ids.numel();
  auto fopt = means.options();
  auto lopt = fopt.dtype(torch::kInt64);
  auto feat = torch::zeros({P, D}, fopt);
  auto alpha = torch::zeros({P}, fopt);
  auto tfinal = torch::ones({P}, fopt.dtype(torch::kFloat64));
  auto median = torch::full({P}, -1, lopt);
  auto maxid = with_stats ? torch::full({P}, -1, lopt) : torch::empty({0}, lopt);
  auto last = torch::zeros({P}, fopt.dtype(torch::kInt32));
  auto entry_weight = torch::zeros({with_stats ? E : 0}, fopt);
  auto entry_touched = torch::zeros({with_stats ? E : 0}, lopt);
  Constants k{alpha_max, alpha_min, t_min, t_median};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "composite_cpu_forward", [&] {
    const auto s = scene_of<scalar_t>(means, conics, opac, feats, radii, offsets, ids, tiles_x, tiles_y, ts, width,
                                      height);
    forward_impl<scalar_t>(s, with_stats, k, feat.data_ptr<scalar_t>(), alpha.data_ptr<scalar_t>(),
                           tfinal.data_ptr<double>(),
                           median.data_ptr<int64_t>(), with_stats ? maxid.data_ptr<int64_t>() : nullptr,
                           last.data_ptr<int32_t>(), with_stats ? entry_weight.data_ptr<scalar_t>() : nullptr,
                           with_stats ? entry_touched.data_ptr<int64_t>() : nullptr);
  });
  return {feat, alpha, tfinal, median, maxid, last, entry_weight, entry_touched};
}

// Per tile-list entry (E, D + 6): d features, then d x, y, a, b, c, opacity.
torch::Tensor composite_backward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac, torch::Tensor feats,
                       torch::Tensor radii, torch::Tensor offsets, torch::Tensor ids, int64_t tiles_x,
                       int64_t tiles_y, int64_t ts, int64_t width, int64_t height, double alpha_max,
                       double alpha_min, double t_min, double t_median, torch::Tensor tfinal, torch::Tensor last,
                       torch::Tensor grad_feat, torch::Tensor grad_alpha) {
  check_inputs(means, conics, opac, feats, radii, offsets, ids);
  TORCH_CHECK(tfinal.scalar_type() == torch::kFloat64 && last.scalar_type() == torch::kInt32,
              "composite_cpu: t_final float64 and last int32 from forward");
  TORCH_CHECK(grad_feat.is_contiguous() && grad_alpha.is_contiguous()
                  && grad_feat.scalar_type() == means.scalar_type()
                  && grad_alpha.scalar_type() == means.scalar_type(), "composite_cpu: gradients");
  const int64_t D = feats.size(1), E = ids.numel();
  auto entry_grad = torch::zeros({E, D + 6}, means.options());
  Constants k{alpha_max, alpha_min, t_min, t_median};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "composite_cpu_backward", [&] {
    const auto s = scene_of<scalar_t>(means, conics, opac, feats, radii, offsets, ids, tiles_x, tiles_y, ts, width,
                                      height);
    backward_impl<scalar_t>(s, k, tfinal.data_ptr<double>(), last.data_ptr<int32_t>(), grad_feat.data_ptr<scalar_t>(),
                            grad_alpha.data_ptr<scalar_t>(), entry_grad.data_ptr<scalar_t>());
  });
  return entry_grad;
}
