// The compiled CPU kernels of milo_backend (loaded by cpu_kernels.py); each has a torch reference.
#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> composite_forward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac,
                                             torch::Tensor feats, torch::Tensor radii, torch::Tensor offsets,
                                             torch::Tensor ids, int64_t tiles_x, int64_t tiles_y, int64_t ts,
                                             int64_t width, int64_t height, bool with_stats, double alpha_max,
                                             double alpha_min, double t_min, double t_median);
torch::Tensor composite_backward(torch::Tensor means, torch::Tensor conics, torch::Tensor opac, torch::Tensor feats,
                                 torch::Tensor radii, torch::Tensor offsets, torch::Tensor ids, int64_t tiles_x,
                                 int64_t tiles_y, int64_t ts, int64_t width, int64_t height, double alpha_max,
                                 double alpha_min, double t_min, double t_median, torch::Tensor tfinal,
                                 torch::Tensor last, torch::Tensor grad_feat, torch::Tensor grad_alpha);
torch::Tensor zbuffer_faces(torch::Tensor uv, torch::Tensor z, torch::Tensor faces, int64_t height, int64_t width);
torch::Tensor wing_vertices(torch::Tensor faces, torch::Tensor tris, int64_t n_verts);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("composite_forward", &composite_forward, "front-to-back compositing of tiled Gaussians");
  m.def("composite_backward", &composite_backward, "its gradient per tile-list entry");
  m.def("zbuffer_faces", &zbuffer_faces, "nearest mesh face per pixel centre");
  m.def("wing_vertices", &wing_vertices, "third vertex of the neighbouring face across each edge");
}
