"""MILo Blender extension: reconstruct meshes and Gaussian splats from photos, then animate the splats with the mesh.

Registration lives in the Blender-facing modules; nothing here imports bpy at module level, so that
`milo_blender.core` (pure numpy) can be imported and tested outside Blender.
"""
