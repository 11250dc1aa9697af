// Neighbours across the edges of mesh faces, for the silhouette antialiasing (mesh/raster_torch.py's
// _wing_vertices is the reference): for edge i of each queried face (the edge opposite its vertex i), the
// third vertex of the other face on that edge, the one of lowest index where several share it, or -1 on a
// boundary. The reference sorts every edge of the faces near the queried ones each iteration; here each
// vertex lists its faces once (in face order, so the first match is the lowest index) and a query scans the
// short list of one end point.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

torch::Tensor wing_vertices(torch::Tensor faces, torch::Tensor tris, int64_t n_verts) {
  TORCH_CHECK(faces.dim() == 2 && faces.size(1) == 3 && faces.scalar_type() == torch::kInt64, "faces: (F,3) int64");
  TORCH_CHECK(tris.dim() == 1 && tris.scalar_type() == torch::kInt64, "tris: (U,) int64");
  faces = faces.contiguous();
  tris = tris.contiguous();
  const int64_t F = faces.size(0), U = tris.size(0);
  const int64_t* f = faces.data_ptr<int64_t>();
  const int64_t* t = tris.data_ptr<int64_t>();
  // indices out of range would read past the arrays: refuse them as the torch reference's indexing does
  for (int64_t i = 0; i < 3 * F; ++i) TORCH_CHECK(f[i] >= 0 && f[i] < n_verts, "face index out of range");
  for (int64_t u = 0; u < U; ++u) TORCH_CHECK(t[u] >= 0 && t[u] < F, "queried face out of range");
  // only vertices of queried faces need their face lists
  std::vector<uint8_t> marked(n_verts, 0);
  for (int64_t u = 0; u < U; ++u)
    for (int k = 0; k < 3; ++k) marked[f[3 * t[u] + k]] = 1;
  std::vector<int64_t> start(n_verts + 1, 0);
  for (int64_t i = 0; i < 3 * F; ++i)
    if (marked[f[i]]) ++start[f[i] + 1];
  for (int64_t v = 0; v < n_verts; ++v) start[v + 1] += start[v];
  std::vector<int64_t> fill(start.begin(), start.end() - 1), incident(start[n_verts]);
  for (int64_t i = 0; i < 3 * F; ++i)
    if (marked[f[i]]) incident[fill[f[i]]++] = i / 3;

  auto result = torch::full({U, 3}, -1, faces.options());
  int64_t* out = result.data_ptr<int64_t>();
  at::parallel_for(0, U, 1024, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t* q = f + 3 * t[u];
      for (int i = 0; i < 3; ++i) {
        const int64_t a = q[(i + 1) % 3], b = q[(i + 2) % 3];
        for (int64_t s = start[a]; s < start[a + 1]; ++s) {
          const int64_t g = incident[s];
          if (g == t[u]) continue;
          const int64_t* r = f + 3 * g;
          int j = -1;  // the slot of r whose opposite edge is {a, b}
          for (int k = 0; k < 3; ++k) {
            const int64_t c = r[(k + 1) % 3], d = r[(k + 2) % 3];
            if ((c == a && d == b) || (c == b && d == a)) { j = k; break; }
          }
          if (j >= 0) { out[3 * u + i] = r[j]; break; }
        }
      }
    }
  });
  return result;
}
