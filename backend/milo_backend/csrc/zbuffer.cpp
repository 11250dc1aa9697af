// CPU mesh z-buffer (mesh/raster_torch.py's visible_faces is the reference): the nearest face covering
// each pixel centre. Same arithmetic as the torch pass, in the same order and precision: pixel-centre
// bounding boxes, edge functions, 1/z interpolated with screen-space barycentrics, and one int64 key per
// pixel (float bits of z in the high word, face id in the low word) of which the smallest wins. The image
// is cut into row bands, one task each, so the result does not depend on the number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline T edge(T ax, T ay, T bx, T by, T px, T py) {
  return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
}

template <typename scalar_t>
void zbuffer_impl(const scalar_t* uv, const scalar_t* z, const int64_t* faces, int64_t F, int64_t H, int64_t W,
                  int64_t* keys) {
  struct Face {
    int64_t f, x0, x1, y0, y1;  // inclusive pixel box; f = -1: nothing to draw
    scalar_t area;
  };
  std::vector<Face> all(F);
  at::parallel_for(0, F, 4096, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      all[f].f = -1;
      const int64_t* v = faces + 3 * f;
      scalar_t x[3], y[3];
      bool finite = true;
      for (int k = 0; k < 3; ++k) {
        x[k] = uv[2 * v[k]];
        y[k] = uv[2 * v[k] + 1];
        finite = finite && std::isfinite(x[k]) && std::isfinite(y[k]) && std::isfinite(z[v[k]]);
      }
      if (!finite) continue;
      const scalar_t half = static_cast<scalar_t>(0.5);
      const scalar_t lox = std::min<scalar_t>(std::max<scalar_t>(std::ceil(std::min({x[0], x[1], x[2]}) - half), 0), W);
      const scalar_t loy = std::min<scalar_t>(std::max<scalar_t>(std::ceil(std::min({y[0], y[1], y[2]}) - half), 0), H);
      const scalar_t hix = std::max<scalar_t>(std::min<scalar_t>(std::floor(std::max({x[0], x[1], x[2]}) - half), W - 1), lox - 1);
      const scalar_t hiy = std::max<scalar_t>(std::min<scalar_t>(std::floor(std::max({y[0], y[1], y[2]}) - half), H - 1), loy - 1);
      if (hix < lox || hiy < loy) continue;
      const scalar_t area = edge(x[0], y[0], x[1], y[1], x[2], y[2]);
      if (area == 0) continue;
      all[f] = {f, static_cast<int64_t>(lox), static_cast<int64_t>(hix), static_cast<int64_t>(loy),
                static_cast<int64_t>(hiy), area};
    }
  });
  std::vector<Face> todo;
  todo.reserve(F);
  for (const Face& face : all) {
    if (face.f >= 0) todo.push_back(face);
  }
  // row bands: each face goes to every band its box reaches
  const int64_t n_bands = std::max<int64_t>(1, std::min<int64_t>(H, 4 * at::get_num_threads()));
  const int64_t band_h = (H + n_bands - 1) / n_bands;
  std::vector<std::vector<int32_t>> bands(n_bands);
  for (int64_t i = 0; i < static_cast<int64_t>(todo.size()); ++i) {
    for (int64_t b = todo[i].y0 / band_h; b <= todo[i].y1 / band_h; ++b) bands[b].push_back(static_cast<int32_t>(i));
  }
  at::parallel_for(0, n_bands, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * band_h, r1 = std::min(H, r0 + band_h);
      for (const int32_t i : bands[b]) {
        const Face& t = todo[i];
        const int64_t* v = faces + 3 * t.f;
        const scalar_t x0 = uv[2 * v[0]], y0 = uv[2 * v[0] + 1], x1 = uv[2 * v[1]], y1 = uv[2 * v[1] + 1];
        const scalar_t x2 = uv[2 * v[2]], y2 = uv[2 * v[2] + 1];
        const scalar_t z0 = z[v[0]], z1 = z[v[1]], z2 = z[v[2]];
        const scalar_t sign = t.area > 0 ? 1 : -1;
        for (int64_t py = std::max(t.y0, r0); py <= std::min(t.y1, r1 - 1); ++py) {
          const scalar_t cy = static_cast<scalar_t>(py) + static_cast<scalar_t>(0.5);
          for (int64_t px = t.x0; px <= t.x1; ++px) {
            const scalar_t cx = static_cast<scalar_t>(px) + static_cast<scalar_t>(0.5);
            const scalar_t w0 = edge(x1, y1, x2, y2, cx, cy);
            const scalar_t w1 = edge(x2, y2, x0, y0, cx, cy);
            const scalar_t w2 = edge(x0, y0, x1, y1, cx, cy);
            if (w0 * sign < 0 || w1 * sign < 0 || w2 * sign < 0) continue;
            const scalar_t inv_z = (w0 / t.area) / z0 + (w1 / t.area) / z1 + (w2 / t.area) / z2;
            float zf = static_cast<float>(static_cast<scalar_t>(1) / inv_z);
            if (zf < 0.0f) zf = 0.0f;  // clamp_min(0); a NaN stays and sorts last, as in torch
            int32_t bits;
            std::memcpy(&bits, &zf, sizeof(bits));
            const int64_t key = (static_cast<int64_t>(bits) << 32) | t.f;
            int64_t& slot = keys[py * W + px];
            if (key < slot) slot = key;
          }
        }
      }
    }
  });
}

}  // namespace

// (H, W) int64: the row of `faces` seen at each pixel centre, -1 where none.
torch::Tensor zbuffer_faces(torch::Tensor uv, torch::Tensor z, torch::Tensor faces, int64_t height, int64_t width) {
  TORCH_CHECK(uv.device().is_cpu() && uv.is_contiguous() && z.is_contiguous() && faces.is_contiguous(),
              "zbuffer_faces: CPU contiguous tensors");
  TORCH_CHECK(uv.scalar_type() == z.scalar_type() && faces.scalar_type() == torch::kInt64,
              "zbuffer_faces: uv and z of one dtype, int64 faces");
  auto keys = torch::full({height * width}, std::numeric_limits<int64_t>::max(), faces.options());
  AT_DISPATCH_FLOATING_TYPES(uv.scalar_type(), "zbuffer_faces", [&] {
    zbuffer_impl<scalar_t>(uv.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), faces.data_ptr<int64_t>(), faces.size(0),
                           height, width, keys.data_ptr<int64_t>());
  });
  auto ids = torch::bitwise_and(keys, 0xFFFFFFFFLL);
  return torch::where(keys == std::numeric_limits<int64_t>::max(), torch::full_like(ids, -1), ids)
      .reshape({height, width});
}
