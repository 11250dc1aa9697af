"""The real spherical-harmonics constants of 3DGS (degree 0..3), torch-free: the renderers (torch), the
PLY colours and the Blender extension's SH rotation (numpy) all use these. Colour = 0.5 + SH_C0 * f_dc at
degree 0."""

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
