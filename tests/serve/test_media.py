import base64

import pytest

from stormvl.serve.media import MediaError, MediaPolicy


def test_data_urls(tmp_path):
    policy = MediaPolicy(max_bytes=1000)
    m = policy.resolve("data:video/mp4;base64," + base64.b64encode(b"abc").decode())
    assert m.open().read_bytes() == b"abc" and m.temporary and m.key.startswith("sha256:")
    assert policy.resolve("data:video/mp4;base64," + base64.b64encode(b"abc").decode()).key == m.key
    m.cleanup()
    assert not m.path.exists()
    with pytest.raises(MediaError) as e:
        policy.resolve("data:video/mp4;base64,!!").open()  # checked when decoded
    assert e.value.status == 400
    for url, status in [
        ("data:image/png;base64,AAAA", 400),
        ("data:video/mp4,abc", 400),
        ("data:video/mp4;base64," + "A" * 2000, 413),
        ("http://example.com/a.mp4", 400),
        ("ftp://example.com/a.mp4", 400),
        ("", 400),
    ]:
        with pytest.raises(MediaError) as e:
            policy.resolve(url)
        assert e.value.status == status, url


def test_local_paths_stay_inside_the_allowed_directories(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "a.mp4").write_bytes(b"x")
    (outside / "b.mp4").write_bytes(b"y")
    (allowed / "link.mp4").symlink_to(outside / "b.mp4")
    (allowed / "inner").symlink_to(outside)
    with pytest.raises(MediaError) as e:
        MediaPolicy().resolve(str(allowed / "a.mp4"))
    assert e.value.status == 403  # no directory allowed by default
    policy = MediaPolicy((allowed,))
    assert policy.resolve(str(allowed / "a.mp4")).path == (allowed / "a.mp4").resolve()
    assert policy.resolve((allowed / "a.mp4").as_uri()).path == (allowed / "a.mp4").resolve()
    for bad in [outside / "b.mp4", f"{allowed}/../outside/b.mp4", allowed / "link.mp4", allowed / "inner" / "b.mp4",
                (outside / "b.mp4").as_uri(), f"{allowed}-evil/x.mp4"]:  # fmt: skip
        with pytest.raises(MediaError) as e:
            policy.resolve(str(bad))
        assert e.value.status == 403, bad
    with pytest.raises(MediaError) as e:
        policy.resolve(str(allowed / "missing.mp4"))
    assert e.value.status == 400


def test_odd_urls_are_refused_not_crashed(tmp_path):
    policy = MediaPolicy((tmp_path,), allow_remote=True, max_bytes=1000)
    (tmp_path / "a.mp4").write_bytes(b"x")
    for url, status in [
        ("file://evil.example/" + str(tmp_path / "a.mp4"), 400),  # a host: not this machine
        (str(tmp_path / "a\0.mp4"), 400),
        ("http://[x", 400),
        ("data:video/mp4;base64,\udcff", 400),
        (str(tmp_path / ("a" * 300 + ".mp4")), 400),  # a name longer than the system allows
        (str(tmp_path / "\ud800.mp4"), 400),  # not valid Unicode: no file can have this name
        ("/etc/\ud800", 400),
    ]:
        with pytest.raises(MediaError) as e:
            policy.resolve(url)
        assert e.value.status == status, url
        str(e.value).encode("utf-8")  # the message can go out as JSON
    with pytest.raises(MediaError) as e:
        policy.resolve("/etc/passwd\n/x")
    assert e.value.status == 403 and "\n" not in str(e.value)  # the path is quoted: one line
    assert policy.resolve("file://localhost" + str(tmp_path / "a.mp4")).path == (tmp_path / "a.mp4").resolve()
    # A remote URL is fetched only when opened (in a decoder thread), and a failure is a 400.
    remote = policy.resolve("http://127.0.0.1:9/v.mp4")
    assert remote.path is None
    with pytest.raises(MediaError) as e:
        remote.open()
    assert e.value.status == 400 and "cannot fetch" in str(e.value)
