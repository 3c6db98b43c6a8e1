"""Other users' files in a shared directory (issue 13, items 1-4).

/dev/shm is world-writable and sticky, shared by every user: a queue there
must trust only what its owner made.  These tests use a private directory of
mode 1777 (like /dev/shm) and act as another user (uid nobody) in a forked
child that drops its privileges, so they need root; without it they skip.
"""
import os
import pwd
import stat

import pytest

import ackring

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="acting as another user (nobody) needs root")


def _nobody():
    return pwd.getpwnam("nobody")


def as_nobody(code, directory):
    """Run python `code` as uid/gid nobody with ACKRING_DIR=directory, in a
    forked child (ackring already imported: the venv may not be readable by
    nobody); the result (returncode, stdout, stderr)."""
    import contextlib
    import io
    import multiprocessing
    import traceback

    nb = _nobody()
    ctx = multiprocessing.get_context("fork")
    rd, wr = ctx.Pipe(duplex=False)

    def child():
        out = io.StringIO()
        rc = 0
        try:
            os.setgroups([])
            os.setgid(nb.pw_gid)
            os.setuid(nb.pw_uid)
            os.environ["ACKRING_DIR"] = directory
            with contextlib.redirect_stdout(out):
                exec(code, {"__name__": "__nobody__"})
            err = ""
        except BaseException:
            rc, err = 1, traceback.format_exc()
        wr.send((rc, out.getvalue(), err))

    p = ctx.Process(target=child, daemon=True)
    p.start()
    try:
        assert rd.poll(30), "the child acting as nobody did not answer"
        return rd.recv()
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


@pytest.fixture
def shared_dir(tmp_path_factory):
    """A world-writable sticky directory, like /dev/shm."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    import tempfile
    d = tempfile.mkdtemp(prefix="ackring-sec-", dir=base)
    os.chmod(d, 0o1777)
    os.chmod(os.path.dirname(d), os.stat(os.path.dirname(d)).st_mode & 0o7777 | 0o005)
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_mode_with_setuid_or_sticky_bits_is_refused(make_queue):
    for bad in (0o4777, 0o2660, 0o1600, 0o10600):
        with pytest.raises(ValueError, match="mode"):
            make_queue(mode=bad)


def test_symlink_at_the_queue_path_is_not_followed(make_queue, ackring_dir, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    os.symlink(str(target), os.path.join(ackring_dir, "ackring.lnk"))
    with pytest.raises((ackring.UntrustedQueue, ackring.IncompatibleQueue, ackring.QueueNotFound, OSError)):
        ackring.open("lnk", watchdog=None)
    with pytest.raises((ackring.UntrustedQueue, FileExistsError, OSError)):
        ackring.create("lnk", capacity=4, message_size=16, exist_ok=True, watchdog=None)
    assert target.read_bytes() == b"precious"            # never opened for writing, never truncated
    assert os.path.islink(os.path.join(ackring_dir, "ackring.lnk"))
    # a failed create leaves no DLQ and no temporary file behind
    assert sorted(os.listdir(ackring_dir)) == ["ackring.lnk"]


@needs_root
def test_foreign_segment_is_refused_unless_trusted(shared_dir):
    """A 0666 queue made by uid nobody: root's open and create(exist_ok)
    refuse it; open(trust_uids=) accepts it explicitly."""
    rc, out, err = as_nobody(
        "import ackring; q = ackring.create('jobs', capacity=4, message_size=32, mode=0o666, watchdog=None);"
        "q.producer().put(b'planted'); q.close()", shared_dir)
    assert rc == 0, err
    with pytest.raises(ackring.UntrustedQueue):
        ackring.open("jobs", dir=shared_dir, watchdog=None)
    with pytest.raises(ackring.UntrustedQueue):
        ackring.create("jobs", capacity=4, message_size=32, exist_ok=True, dir=shared_dir, watchdog=None)
    assert issubclass(ackring.UntrustedQueue, PermissionError)
    with ackring.open("jobs", dir=shared_dir, watchdog=None, trust_uids=[_nobody().pw_uid]) as q:
        m = q.consumer().get(timeout=1)
        assert m.body == b"planted"
        m.ack()
    # create(exist_ok) takes the same explicit trust, and still checks settings
    with pytest.raises(ackring.IncompatibleQueue):
        ackring.create("jobs", capacity=8, exist_ok=True, dir=shared_dir, watchdog=None,
                       trust_uids=[_nobody().pw_uid])
    with ackring.create("jobs", capacity=4, message_size=32, exist_ok=True, dir=shared_dir, watchdog=None,
                        trust_uids=[_nobody().pw_uid]) as q:
        assert q.stats()["depth"] == 0


@needs_root
def test_squatted_dead_letter_queue_is_not_used(shared_dir):
    """uid nobody plants ackring.<name>.dlq (mode 0666) before root creates
    <name>: root's create must not use it, and nobody never reads a dead letter."""
    rc, out, err = as_nobody(
        "import os; fd = os.open(os.path.join(os.environ['ACKRING_DIR'], 'ackring.pay.dlq'),"
        " os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666); os.fchmod(fd, 0o666); os.close(fd)", shared_dir)
    assert rc == 0, err
    dlq = os.path.join(shared_dir, "ackring.pay.dlq")
    assert os.stat(dlq).st_uid == _nobody().pw_uid
    with pytest.raises(ackring.UntrustedQueue):
        ackring.create("pay", capacity=4, message_size=64, dir=shared_dir, watchdog=None)
    # nothing of root's was left: no main queue, no temp files; the planted file is untouched
    assert sorted(os.listdir(shared_dir)) == ["ackring.pay.dlq"]
    assert os.stat(dlq).st_size == 0


@needs_root
def test_queue_is_private_by_default(shared_dir):
    """mode=0o600 (the default): another uid can neither read nor open it."""
    q = ackring.create("secret", capacity=4, message_size=64, dir=shared_dir, watchdog=None)
    q.producer().put(b"card=4111-1111")
    st = os.stat(os.path.join(shared_dir, "ackring.secret"))
    assert stat.S_IMODE(st.st_mode) == 0o600
    rc, out, err = as_nobody(
        "import ackring\n"
        "try:\n"
        "    ackring.open('secret', watchdog=None)\n"
        "except PermissionError as e:\n"
        "    print('refused', type(e).__name__)\n", shared_dir)
    assert rc == 0 and out.startswith("refused"), (out, err)
    rc, out, err = as_nobody(
        "import os\n"
        "try:\n"
        "    open(os.path.join(os.environ['ACKRING_DIR'], 'ackring.secret'), 'rb').read()\n"
        "except PermissionError:\n"
        "    print('no read')\n", shared_dir)
    assert out.strip() == "no read", (out, err)
    m = q.consumer().get(timeout=1)
    assert m.body == b"card=4111-1111"
    m.ack()
    q.close()
    ackring.unlink("secret", dir=shared_dir)
