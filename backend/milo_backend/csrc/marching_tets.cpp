// Marching tetrahedra's connectivity on the CPU (mesh/marching_tets.py's torch pass is the reference):
// which tetrahedron edges cross the surface, one vertex per crossing edge (numbered by the sorted edge
// key, as torch.unique numbers them), and the faces of each tetrahedron's case. The vertex positions stay
// in torch (differentiable); this is the part without gradients, one pass over all tetrahedra instead of
// several gathers of every row.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int kEdges[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};

}  // namespace

// outside (P,) uint8 (1: sdf > 0), tets (T,4) int64, triangles (16,2,3) int64 (edge slots, -1: none).
// Returns faces (F,3) int64 and vert_edges (V,2) int64 (a < b), as marching_tetrahedra's torch pass.
std::vector<torch::Tensor> marching_tets_topology(torch::Tensor outside, torch::Tensor tets, torch::Tensor triangles) {
  TORCH_CHECK(outside.device().is_cpu() && outside.scalar_type() == torch::kUInt8 && outside.is_contiguous(),
              "marching_tets_topology: uint8 CPU occupancy");
  TORCH_CHECK(tets.scalar_type() == torch::kInt64 && tets.is_contiguous() && tets.dim() == 2 && tets.size(1) == 4,
              "marching_tets_topology: (T,4) int64 tetrahedra");
  TORCH_CHECK(triangles.scalar_type() == torch::kInt64 && triangles.is_contiguous() && triangles.numel() == 96,
              "marching_tets_topology: (16,2,3) int64 case table");
  const int64_t P = outside.numel(), T = tets.size(0);
  const uint8_t* occ = outside.data_ptr<uint8_t>();
  const int64_t* tt = tets.data_ptr<int64_t>();
  const int64_t* table = triangles.data_ptr<int64_t>();
  auto case_of = [&](int64_t t) {
    const int64_t* v = tt + 4 * t;
    return (occ[v[0]] ? 1 : 0) | (occ[v[1]] ? 2 : 0) | (occ[v[2]] ? 4 : 0) | (occ[v[3]] ? 8 : 0);
  };
  auto n_tris = [&](int c) { return (table[c * 6] >= 0 ? 1 : 0) + (table[c * 6 + 3] >= 0 ? 1 : 0); };
  auto n_cross = [&](int c) {
    int n = 0;
    for (const auto& e : kEdges) n += ((c >> e[0]) & 1) != ((c >> e[1]) & 1);
    return n;
  };
  // pass 1: per chunk, the crossing edges and faces it yields (chunks in order keep torch's face order)
  const int64_t grain = 1 << 15;
  const int64_t n_chunks = std::max<int64_t>(1, (T + grain - 1) / grain);
  std::vector<int64_t> chunk_keys(n_chunks + 1, 0), chunk_faces(n_chunks + 1, 0);
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t k = 0, f = 0;
      for (int64_t t = c * grain; t < std::min(T, (c + 1) * grain); ++t) {
        const int cs = case_of(t);
        if (cs == 0 || cs == 15) continue;
        k += n_cross(cs);
        f += n_tris(cs);
      }
      chunk_keys[c + 1] = k;
      chunk_faces[c + 1] = f;
    }
  });
  for (int64_t c = 0; c < n_chunks; ++c) {
    chunk_keys[c + 1] += chunk_keys[c];
    chunk_faces[c + 1] += chunk_faces[c];
  }
  const int64_t K = chunk_keys[n_chunks], F = chunk_faces[n_chunks];
  // pass 2: the edge key of every crossing, and per face the index of its crossings in that list
  std::vector<int64_t> keys(K), face_slots(3 * F);
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t k = chunk_keys[c], f = chunk_faces[c];
      for (int64_t t = c * grain; t < std::min(T, (c + 1) * grain); ++t) {
        const int cs = case_of(t);
        if (cs == 0 || cs == 15) continue;
        const int64_t* v = tt + 4 * t;
        int64_t slot_index[6];
        for (int e = 0; e < 6; ++e) {
          const int a = kEdges[e][0], b = kEdges[e][1];
          if (((cs >> a) & 1) == ((cs >> b) & 1)) continue;
          const int64_t pa = v[a], pb = v[b];
          slot_index[e] = k;
          keys[k++] = std::min(pa, pb) * P + std::max(pa, pb);
        }
        for (int tri = 0; tri < 2; ++tri) {
          const int64_t* row = table + cs * 6 + tri * 3;
          if (row[0] < 0) continue;
          for (int j = 0; j < 3; ++j) face_slots[3 * f + j] = slot_index[row[j]];
          ++f;
        }
      }
    }
  });
  // one vertex per distinct edge, numbered in key order
  std::vector<int64_t> unique_keys(keys);
  std::sort(unique_keys.begin(), unique_keys.end());
  unique_keys.erase(std::unique(unique_keys.begin(), unique_keys.end()), unique_keys.end());
  const int64_t V = static_cast<int64_t>(unique_keys.size());
  auto faces = torch::empty({F, 3}, tets.options());
  auto vert_edges = torch::empty({V, 2}, tets.options());
  int64_t* fo = faces.data_ptr<int64_t>();
  int64_t* ve = vert_edges.data_ptr<int64_t>();
  at::parallel_for(0, 3 * F, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      fo[i] = std::lower_bound(unique_keys.begin(), unique_keys.end(), keys[face_slots[i]]) - unique_keys.begin();
    }
  });
  for (int64_t i = 0; i < V; ++i) {
    ve[2 * i] = unique_keys[i] / P;
    ve[2 * i + 1] = unique_keys[i] % P;
  }
  return {faces, vert_edges};
}
