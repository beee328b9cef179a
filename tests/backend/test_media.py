"""labelstudio/media.py guards, in process (nothing here connects anywhere but 127.0.0.1)."""
from __future__ import annotations

import base64

import numpy as np
import pytest
from backend_support import png, scene

from jobs.settings import Settings
from labelstudio.client import LabelStudioClient
from labelstudio.media import MediaError, MediaFetcher


def _fetcher(tmp_path, **env):
    s = Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path / "root"), **env})
    return MediaFetcher(s.media_policy(), LabelStudioClient(s.label_studio_url, s.label_studio_api_key))


def test_local_files_with_traversal_protection(tmp_path):
    (tmp_path / "root" / "ds").mkdir(parents=True)
    img, _ = scene(1)
    (tmp_path / "root" / "ds" / "a.png").write_bytes(png(img))
    (tmp_path / "secret.png").write_bytes(png(img))
    (tmp_path / "root" / "ds" / "link.png").symlink_to(tmp_path / "secret.png")
    f = _fetcher(tmp_path)
    np.testing.assert_array_equal(f.image("/data/local-files/?d=ds/a.png"), img)
    np.testing.assert_array_equal(f.image("/data/local-files/?d=ds%2Fa.png"), img)
    for bad in ("../secret.png", "ds/../../secret.png", str(tmp_path / "secret.png"), "ds/link.png", "ds/none.png"):
        with pytest.raises(MediaError):
            f.fetch(f"/data/local-files/?d={bad}")


def test_url_policy(tmp_path, fake_ls):
    f = _fetcher(tmp_path, MEDIA_ALLOWED_HOSTS="*")
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x"):
        with pytest.raises(MediaError, match="scheme"):
            f.fetch(url)
    for url in ("http://localhost:1/x.png", "http://127.0.0.1:1/x.png", "http://[::1]:1/x.png",
                "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x.png"):
        with pytest.raises(MediaError, match="non-public"):  # "*" means public hosts only
            f.fetch(url)
    strict = _fetcher(tmp_path)
    with pytest.raises(MediaError, match="MEDIA_ALLOWED_HOSTS"):
        strict.fetch("http://127.0.0.1:1/x.png")
    with pytest.raises(MediaError, match="LABEL_STUDIO_URL"):
        strict.fetch("/data/upload/1/x.png")
    img, _ = scene(2)
    data = "data:image/png;base64," + base64.b64encode(png(img)).decode()
    np.testing.assert_array_equal(strict.image(data), img)


def test_label_studio_host_gets_the_token_others_do_not(tmp_path, fake_ls):
    from fake_ls import TOKEN

    img, _ = scene(3)
    fake_ls.files["/data/upload/9/m.png"] = png(img)
    f = _fetcher(tmp_path, LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=TOKEN)
    np.testing.assert_array_equal(f.image("/data/upload/9/m.png"), img)
    np.testing.assert_array_equal(f.image(fake_ls.url + "/data/upload/9/m.png"), img)
    # the same server named differently is not LS's host: needs MEDIA_ALLOWED_HOSTS, and then gets no token
    other = fake_ls.url.replace("127.0.0.1", "localhost")
    with pytest.raises(MediaError, match="MEDIA_ALLOWED_HOSTS"):
        f.fetch(other + "/data/upload/9/m.png")
    g = _fetcher(tmp_path, LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=TOKEN, MEDIA_ALLOWED_HOSTS="localhost")
    with pytest.raises(MediaError, match="HTTP 401"):
        g.fetch(other + "/data/upload/9/m.png")
    small = _fetcher(tmp_path, LABEL_STUDIO_URL=fake_ls.url, LABEL_STUDIO_API_KEY=TOKEN, MEDIA_MAX_BYTES="100")
    with pytest.raises(MediaError, match="MEDIA_MAX_BYTES"):
        small.fetch("/data/upload/9/m.png")


def test_personal_access_token_is_exchanged_and_refreshed(fake_ls):
    from fake_ls import PAT

    from labelstudio.client import LabelStudioClient

    fake_ls.projects[31] = {"id": 31, "label_config": "<View/>"}
    client = LabelStudioClient(fake_ls.url, PAT)
    assert "PAT" in repr(client) and PAT not in repr(client)
    assert client.project("31")["id"] == 31
    assert client.auth_header()["Authorization"].startswith("Bearer access-")
    fake_ls.access_tokens.clear()  # the access token expired early: a 401 triggers one refresh and a retry
    assert client.project("31")["id"] == 31
    assert LabelStudioClient(fake_ls.url, "legacy").auth_header() == {"Authorization": "Token legacy"}


def test_tiff_bands_and_stretch_per_project(tmp_path):
    """A 4-band 16-bit scene: RASTER_PROJECTS renders it with bands 4,3,2 for project 12; other projects get the
    default rendering (bands 1,2,3); PNGs load as they are whatever the setting."""
    import io

    import tifffile

    from formats.images import load_image
    from formats.raster import load_raster

    rng = np.random.default_rng(5)
    bands = rng.integers(0, 4000, (4, 40, 50), dtype=np.uint16)
    bands[3, :, :25] = 60000  # band 4 differs visibly from bands 1-3
    buf = io.BytesIO()
    tifffile.imwrite(buf, bands, photometric="minisblack", planarconfig="separate")
    tif = buf.getvalue()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "s.tif").write_bytes(tif)
    img, _ = scene(6)
    (tmp_path / "root" / "q.png").write_bytes(png(img))
    f = _fetcher(tmp_path, RASTER_PROJECTS='{"12": {"bands": "4,3,2", "stretch": [1, 99]}}')
    url = "/data/local-files/?d=s.tif"

    got = f.image(url, 1, project="12")
    want = load_raster(tif, [4, 3, 2], (1.0, 99.0)).pixels
    np.testing.assert_array_equal(got, want)
    assert got[:, :25, 0].min() == 255 and got[:, 25:, 0].max() < 255  # red is band 4
    np.testing.assert_array_equal(f.image(url, 1, project="13"), load_image(tif))  # unlisted project: default
    assert not np.array_equal(f.image(url, 1, project="13"), got)
    np.testing.assert_array_equal(f.image("/data/local-files/?d=q.png", 2, project="12"), img)

    both = _fetcher(tmp_path, RASTER_BANDS="2", RASTER_STRETCH="minmax")  # deployment-wide default, grey
    grey = both.image(url, 1, project="13")
    np.testing.assert_array_equal(grey, load_raster(tif, [2], "minmax").pixels)
    assert (grey[..., 0] == grey[..., 2]).all()


def test_raster_settings_are_validated_at_start():
    ok = Settings.from_env({"RASTER_BANDS": "4,3,2", "RASTER_PROJECTS": '{"7": {"bands": [3, 2, 1]}}'})
    assert ok.raster_for("7") == ("3,2,1", "auto") and ok.raster_for(8) == ("4,3,2", "auto")
    assert Settings.from_env({}).raster_for("1") == ("", "auto")
    for env, match in ((({"RASTER_BANDS": "4,3"}), "RASTER_BANDS"), ({"RASTER_STRETCH": "99,2"}, "RASTER_STRETCH"),
                       ({"RASTER_PROJECTS": "{bad json"}, "not JSON"),
                       ({"RASTER_PROJECTS": '{"1": {"band": "1"}}'}, "unknown keys"),
                       ({"RASTER_PROJECTS": '{"1": {"bands": "0,1,2"}}'}, r"RASTER_PROJECTS\['1'\]"),
                       ({"RASTER_PROJECTS": '["4,3,2"]'}, "must map")):
        with pytest.raises(ValueError, match=match):
            Settings.from_env(env)
