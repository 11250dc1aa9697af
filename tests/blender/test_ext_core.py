"""bpy-free parts of the extension: backend resolution and commands, set-up steps, run folders, up axis,
camera conversion, mesh PLY reading, splat attributes, progress texts."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from milo_backend.data.camera import Camera, look_at
from milo_backend.errors import MiloError
from milo_backend.gaussians.splat_ply import write_splat_ply, read_splat_ply
from milo_blender.core import backend
from milo_blender.core.camera_convert import blender_camera_matrix, blender_camera_params, load_cameras_json
from milo_blender.core.display import format_duration, metrics_text, progress_text
from milo_blender.core.mesh_ply import read_mesh_ply
from milo_blender.core.orient import estimate_up, rotation_to_z, up_rotation
from milo_blender.core.protocol import JobState, apply_event
from milo_blender.core.runs import RunFolder, check_output_folder, check_source
from milo_blender.core.splat_attributes import base_colors, splat_attributes


# -- which Python runs the backend ------------------------------------------------------------------
def make_python(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_backend_python_resolution_order(tmp_path):
    env_py, pref_py = make_python(tmp_path / "env py" / "python"), make_python(tmp_path / "pref py" / "python")
    managed = tmp_path / "managed venv"
    managed_py = make_python(backend.venv_python(managed))
    assert backend.resolve_backend_python(str(pref_py), managed, {"MILO_BACKEND_PYTHON": str(env_py)}) == env_py
    assert backend.resolve_backend_python(str(pref_py), managed, {}) == pref_py
    assert backend.resolve_backend_python("", managed, {}) == managed_py
    assert backend.resolve_backend_python(str(managed), tmp_path / "x", {}) == managed_py  # a venv folder


def test_backend_python_errors_say_how_to_fix(tmp_path):
    with pytest.raises(MiloError, match="not set up") as exc:
        backend.resolve_backend_python("", tmp_path / "none", {})
    assert "Set up backend" in exc.value.hint
    with pytest.raises(MiloError, match="not found.*preference") as exc:
        backend.resolve_backend_python(str(tmp_path / "gone" / "python"), tmp_path / "none", {})
    assert exc.value.path.endswith("python")


def test_train_command_is_an_argument_list():
    opts = backend.TrainOptions(source=Path("/my photos/été"), output=Path("/out dir"), preset="lowres",
                                scene="indoor", iterations=500, device="cpu", max_size=800, resume=True)
    cmd = backend.train_command("/env/bin/python", opts)
    assert cmd == ["/env/bin/python", "-m", "milo_backend", "train", "/my photos/été", "/out dir", "--preset",
                   "lowres", "--scene", "indoor", "--iterations", "500", "--device", "cpu", "--max-size", "800",
                   "--resume", "--json"]
    plain = backend.TrainOptions(source=Path("a"), output=Path("b")).args()
    assert "--max-size" not in plain and "--resume" not in plain and "--ray" not in plain
    remote = backend.TrainOptions(source=Path("a"), output=Path("b"), ray_address=" ray://gpu-box:10001 ").args()
    assert remote[-2:] == ["--ray", "ray://gpu-box:10001"]
    with pytest.raises(ValueError):
        backend.TrainOptions(source=Path("a"), output=Path("b"), preset="ultra").args()
    assert backend.PRESETS[2] == "default"  # the backend's own list


# -- "Set up backend" --------------------------------------------------------------------------------
GPU = backend.NvidiaGpu("NVIDIA GeForce RTX 4090", "550.54", 8.9)


@pytest.mark.parametrize("system,gpu,index,label", [
    ("Linux", None, "https://download.pytorch.org/whl/cpu", "CPU"),
    ("Linux", GPU, None, "CUDA"),                                  # PyPI's Linux wheels are CUDA builds
    ("Windows", None, "https://download.pytorch.org/whl/cpu", "CPU"),
    ("Windows", GPU, "https://download.pytorch.org/whl/cu126", "CUDA"),
    ("Windows", backend.NvidiaGpu("RTX 5090", "576.02", 12.0), "https://download.pytorch.org/whl/cu128", "CUDA"),
    ("Linux", backend.NvidiaGpu("Tesla K80", "470.1", 3.7), "https://download.pytorch.org/whl/cpu", "too old"),
    ("Darwin", None, None, "Metal"),
])
def test_torch_variant_follows_the_machine(system, gpu, index, label):
    args, text = backend.torch_install_args(system, gpu)
    assert args[0] == "torch" and label in text
    assert (args[args.index("--index-url") + 1] if "--index-url" in args else None) == index


def test_setup_steps(tmp_path):
    venv = tmp_path / "backend venv"
    wheel = tmp_path / "wheels" / "milo_backend-0.1.0-py3-none-any.whl"
    steps = backend.setup_steps("/blender/python3.11", venv, wheel, GPU, system="Linux")
    vpy = str(backend.venv_python(venv))
    assert steps[0].argv == ["/blender/python3.11", "-m", "venv", str(venv)]
    assert steps[1].argv[:4] == [vpy, "-m", "pip", "install"] and "torch" in steps[1].argv
    assert steps[2].argv[-1] == str(wheel) + "[cuda]"
    assert steps[3].argv == [vpy, "-m", "milo_backend", "setup-gpu", "--json"] and steps[3].json
    assert steps[4].argv == [vpy, "-m", "milo_backend", "doctor", "--json"] and steps[4].json
    assert not any(s.json for s in steps[:3])
    cpu = backend.setup_steps("/py", venv, wheel, None, system="Linux")
    assert cpu[2].argv[-1] == str(wheel)
    assert [s.argv[3] for s in cpu[3:]] == ["doctor"]  # no GPU: no kernels to set up


def test_detect_nvidia_gpu(monkeypatch):
    monkeypatch.setattr(backend.shutil, "which", lambda name: None)
    assert backend.detect_nvidia_gpu() is None
    monkeypatch.setattr(backend.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    def fake_run(argv, **kw):
        assert argv[0] == "/usr/bin/nvidia-smi"
        return subprocess.CompletedProcess(argv, 0, "NVIDIA H100 80GB HBM3, 550.90.07, 9.0\n", "")
    assert backend.detect_nvidia_gpu(run=fake_run) == backend.NvidiaGpu("NVIDIA H100 80GB HBM3", "550.90.07", 9.0)
    failing = lambda argv, **kw: subprocess.CompletedProcess(argv, 9, "", "NVIDIA-SMI has failed")  # noqa: E731
    assert backend.detect_nvidia_gpu(run=failing) is None


def test_bundled_wheel_lookup(tmp_path):
    with pytest.raises(MiloError, match="no backend wheel"):
        backend.bundled_backend_wheel(tmp_path)
    (tmp_path / "wheels").mkdir()
    w = tmp_path / "wheels" / "milo_backend-0.1.0-py3-none-any.whl"
    w.write_bytes(b"")
    assert backend.bundled_backend_wheel(tmp_path) == w


# -- run folders -----------------------------------------------------------------------------------
def test_output_folder_rules(tmp_path):
    out = tmp_path / "run"
    check_output_folder(out, resume=False)  # new folder: fine
    with pytest.raises(MiloError, match="nothing to resume"):
        check_output_folder(out, resume=True)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest.pt").write_bytes(b"x")
    assert RunFolder(out).resumable and not RunFolder(out).finished
    with pytest.raises(MiloError, match="interrupted run") as exc:
        check_output_folder(out, resume=False)
    assert "Resume" in exc.value.hint
    check_output_folder(out, resume=True)
    (out / "gaussians.ply").write_bytes(b"x")
    with pytest.raises(MiloError, match="finished run"):
        check_output_folder(out, resume=False)
    with pytest.raises(MiloError, match="no output folder"):
        check_output_folder(Path(""), resume=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(MiloError, match="is a file"):
        check_output_folder(tmp_path / "file", resume=False)


def test_source_checks(tmp_path):
    with pytest.raises(MiloError, match="no photos folder"):
        check_source(Path(""))
    with pytest.raises(MiloError, match="does not exist"):
        check_source(tmp_path / "missing")
    check_source(tmp_path)


# -- up axis ----------------------------------------------------------------------------------------
def ring_cameras(up, n=8, tilt=0.0):
    up = np.asarray(up, float) / np.linalg.norm(up)
    a = np.cross(up, [0.3, 0.5, 0.7])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    eyes = [3 * (np.cos(t) * a + np.sin(t) * b) + up for t in np.linspace(0, 2 * np.pi, n, endpoint=False)]
    return np.stack([look_at(e, np.zeros(3) + tilt * a, up=up) for e in eyes])


@pytest.mark.parametrize("up", [(0, 0, 1), (0, 1, 0), (0.3, -0.8, 0.5), (0, 0, -1)])
def test_up_is_estimated_from_upright_cameras(up):
    w2c = ring_cameras(up)
    est = estimate_up(w2c)
    assert np.allclose(est, np.asarray(up) / np.linalg.norm(up), atol=1e-6)
    m = up_rotation(w2c)
    assert np.allclose(m[:3, :3] @ est, [0, 0, 1], atol=1e-9)
    assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3)) and np.isclose(np.linalg.det(m[:3, :3]), 1)
    flipped = up_rotation(w2c, flip=True)
    assert np.allclose(flipped[:3, :3] @ est, [0, 0, -1], atol=1e-9)


def test_rotation_to_z_special_cases():
    assert np.allclose(rotation_to_z([0, 0, 1]), np.eye(3))
    r = rotation_to_z([0, 0, -1])
    assert np.allclose(r @ [0, 0, -1], [0, 0, 1]) and np.isclose(np.linalg.det(r), 1)
    assert np.allclose(up_rotation(None), np.eye(4))


# -- cameras ----------------------------------------------------------------------------------------
def test_blender_camera_pose_and_lens():
    # the full projection is checked against Blender's own camera model in test_ext_blender.py
    w2c = look_at([2.0, -3.0, 1.0], [0.1, 0.2, 0.3])
    m = blender_camera_matrix(w2c)
    assert np.allclose(m[:3, 3], Camera("c", 4, 3, 1, 1, 2, 1.5, world_to_cam=w2c).center)
    assert np.allclose(-m[:3, 2], w2c[2, :3])   # Blender cameras look down -Z; OpenCV's forward is +z
    assert np.allclose(-m[:3, 1], w2c[1, :3])   # Blender's +Y is up; OpenCV's y points down
    landscape = blender_camera_params(Camera("l", 640, 480, 500, 500, 320, 240))
    assert landscape.sensor_fit == "HORIZONTAL" and np.isclose(landscape.lens, 500 * 36 / 640)
    assert (landscape.shift_x, landscape.shift_y, landscape.pixel_aspect) == (0.0, 0.0, (1.0, 1.0))
    portrait = blender_camera_params(Camera("p", 480, 640, 520, 520, 200, 340))
    assert portrait.sensor_fit == "VERTICAL" and np.isclose(portrait.lens, 520 * 36 / 640)
    assert portrait.shift_x > 0 and portrait.shift_y > 0  # principal point left of and below the centre


def test_cameras_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "cameras.json"
    bad.write_text('{"cameras": [{"name": "x"}]}')
    with pytest.raises(MiloError, match="not a MILo cameras.json") as exc:
        load_cameras_json(bad)
    assert exc.value.path == str(bad)
    good = tmp_path / "good.json"
    cam = Camera("a", 10, 8, 9.0, 9.0, 5.0, 4.0, world_to_cam=look_at([1, 2, 3], [0, 0, 0]))
    import json
    good.write_text(json.dumps({"cameras": [cam.to_json()], "extent": 2.5}))
    cams, extent = load_cameras_json(good)
    assert extent == 2.5 and np.allclose(cams[0].world_to_cam, cam.world_to_cam)


# -- mesh PLY -----------------------------------------------------------------------------------------
def write_mesh(path, faces, colors=True, text=False):
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")] if colors else [])
    v = np.zeros(5, dtype=fields)
    v["x"] = np.arange(5)
    if colors:
        v["red"] = [255, 0, 0, 10, 20]
    f = np.empty(len(faces), dtype=[("vertex_indices", "O")])
    f["vertex_indices"] = [np.array(x, np.int32) for x in faces]
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")], text=text).write(str(path))


@pytest.mark.parametrize("text", [False, True])
def test_read_mesh_ply_triangles_and_polygons(tmp_path, text):
    tri = tmp_path / "tri.ply"
    write_mesh(tri, [[0, 1, 2], [2, 3, 4]], text=text)
    m = read_mesh_ply(tri)
    assert m.corners.tolist() == [0, 1, 2, 2, 3, 4] and m.face_sizes.tolist() == [3, 3]
    assert m.loop_starts.tolist() == [0, 3] and np.isclose(m.colors[0, 0], 1.0) and m.colors.shape == (5, 3)
    poly = tmp_path / "poly ü.ply"
    write_mesh(poly, [[0, 1, 2, 3], [2, 3, 4]], colors=False, text=text)
    m = read_mesh_ply(poly)
    assert m.face_sizes.tolist() == [4, 3] and m.loop_starts.tolist() == [0, 4] and m.colors is None


def test_read_mesh_ply_rejects_what_is_not_a_mesh(tmp_path):
    with pytest.raises(MiloError, match="not found"):
        read_mesh_ply(tmp_path / "none.ply")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"this is not a ply")
    with pytest.raises(MiloError, match="not a readable PLY"):
        read_mesh_ply(junk)
    splats = tmp_path / "splats.ply"
    write_splat_ply(splats, np.zeros((3, 3)), np.zeros((3, 1, 3)), np.zeros(3), np.zeros((3, 3)), np.ones((3, 4)))
    with pytest.raises(MiloError, match="no faces"):
        read_mesh_ply(splats)
    bad = tmp_path / "bad.ply"
    write_mesh(bad, [[0, 1, 9]])
    with pytest.raises(MiloError, match="missing vertices"):
        read_mesh_ply(bad)
    nan = tmp_path / "nan.ply"
    write_mesh(nan, [[0, 1, 2]])
    data = PlyData.read(io.BytesIO(nan.read_bytes()))  # not memory-mapped: the file is rewritten below
    data["vertex"].data["y"][3] = np.nan
    data.write(str(nan))
    with pytest.raises(MiloError, match="non-finite positions .vertex 3"):
        read_mesh_ply(nan)


# -- splat attributes ---------------------------------------------------------------------------------
def test_splat_attributes_match_the_ply_properties(tmp_path):
    rng = np.random.default_rng(3)
    n = 7
    path = tmp_path / "s.ply"
    write_splat_ply(path, rng.normal(size=(n, 3)), rng.normal(size=(n, 9, 3)), rng.normal(size=n),
                    rng.normal(size=(n, 3)), rng.normal(size=(n, 4)))
    splats = read_splat_ply(path)
    positions, attrs = splat_attributes(splats)
    raw = PlyData.read(str(path))["vertex"].data  # the file's own columns, independently of our code
    assert np.allclose(positions, np.stack([raw["x"], raw["y"], raw["z"]], 1))
    assert set(attrs) == set(raw.dtype.names) - {"x", "y", "z", "nx", "ny", "nz"}
    for name, values in attrs.items():
        assert values.dtype == np.float32 and np.array_equal(values, raw[name]), name
    rgba = base_colors(splats)
    assert rgba.shape == (n, 4) and (rgba >= 0).all() and (rgba <= 1).all()
    assert np.allclose(rgba[:, 3], 1 / (1 + np.exp(-splats["opacity_logits"])), atol=1e-6)


# -- texts -------------------------------------------------------------------------------------------
def test_progress_texts():
    assert [format_duration(s) for s in (None, 5, 81.4, 3725)] == ["", "5 s", "1 min 21 s", "1 h 02 min"]
    s = JobState()
    apply_event(s, {"event": "stage", "stage": "train", "message": "Training"})
    apply_event(s, {"event": "progress", "stage": "train", "step": 120, "total": 2000, "eta_s": 81,
                    "psnr": 23.456, "loss": 0.07, "gaussians": 12000})
    assert progress_text(s) == "Training 120 / 2000 - 1 min 21 s left"
    assert metrics_text(s) == "PSNR 23.46 dB, loss 0.0700, 12,000 Gaussians"
