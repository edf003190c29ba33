"""Gaussian scene tools: everything that makes frames (and their G-buffers) for the enhancer.

Modules, in data-flow order:

- ``cameras``      Intrinsics, poses (camera-to-world, OpenCV), trajectories and lateral shifts
- ``street``       procedural street layouts (trimesh meshes, lighting, ego trajectory), deterministic per seed
- ``pbr``          Mitsuba 3 ground-truth renders of a layout: HDR, sRGB, z-depth, instance ids, alpha
- ``lens``         lens distortion models and undistortion to pinhole, once, on load
- ``loaders``      nerfstudio/instant-ngp transforms.json and COLMAP models (text and binary), read and written;
                   distorted lenses and camera rigs
- ``capture``      structure from motion (pycolmap) for a video or photos, and the street frame (align_to_ground)
- ``views``        PosedImages, the container between loaders, the renderer and reconstruction
- ``gaussians``    GaussianScene (safetensors) and ``ply`` (standard 3DGS .ply import/export)
- ``rasterize``    gsplat.rasterization on CUDA, a numba CPU fallback with the same call shape
- ``reconstruct``  3DGS training with densify/prune, checkpoints and held-out PSNR
- ``assets``       the asset databank: extraction from reconstructions, storage, queries
- ``scene``        Scene: background + inserted assets along tracks; render(trajectory) with G-buffers and flow
- ``flow``         geometric flow and occlusion from depth, poses and object motion
- ``demo_scene``   builds the shipped demo street end to end

Submodules are imported explicitly (``from scene_tools.scene import Scene``) so that importing one
part does not load Mitsuba, numba kernels or gsplat.
"""
