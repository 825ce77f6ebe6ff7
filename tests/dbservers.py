"""Throw-away PostgreSQL and Redis servers for the database tests.

Each server runs from a fresh temporary directory under /tmp (data, log, TLS files and its Unix
socket: the socket path must fit in sun_path's 108 bytes), listens on 127.0.0.1 on a free port and
on that Unix socket, and is stopped and its directory removed at the end. PostgreSQL refuses to
run as root, so under root initdb and the server run as the ``postgres`` user.

A watcher process (started per server, in its own session) holds the read end of a pipe whose
write end only this process holds: if the test process dies without stopping the servers
(SIGKILL, a crash), the watcher sees EOF, stops the servers it was told about and removes the
directory. No server or directory outlives the test run.

A missing server binary raises ServerMissing (the fixture errors, so the tests fail; they are
never skipped): ``make services`` installs them.
"""

import atexit
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) is 108, including the terminating NUL
START_TIMEOUT = 60


class ServerMissing(RuntimeError):
    """A server binary the tests need is not installed."""


class ServerFailed(RuntimeError):
    """A server did not start."""


def _is_root():
    return os.geteuid() == 0


def _short_tmp():
    """A short directory for temporary dirs: /tmp if usable, else the default temp dir."""
    if os.path.isdir('/tmp') and os.access('/tmp', os.W_OK | os.X_OK):
        return '/tmp'
    return tempfile.gettempdir()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _version_key(path):
    m = re.search(r'/postgresql/(\d+)(?:\.(\d+))?/', path)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


def postgres_bindir():
    """The newest /usr/lib/postgresql/<version>/bin with initdb and postgres (or $FERROLOOP_PG_BIN)."""
    env = os.environ.get('FERROLOOP_PG_BIN')
    candidates = [env] if env else sorted(
        (os.path.dirname(p) for p in glob.glob('/usr/lib/postgresql/*/bin/postgres')), key=_version_key)
    for bindir in reversed(candidates):
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ('postgres', 'initdb')):
            return bindir
    raise ServerMissing('PostgreSQL server not found (no /usr/lib/postgresql/*/bin/postgres and initdb): '
                        'run `make services` (apt-get install -y postgresql)')


def redis_binary():
    path = os.environ.get('FERROLOOP_REDIS_SERVER') or shutil.which('redis-server') or '/usr/bin/redis-server'
    if not os.access(path, os.X_OK):
        raise ServerMissing('redis-server not found: run `make services` (apt-get install -y redis-server)')
    return path


# -- crash-time cleanup ------------------------------------------------------------------------

_WATCHER = r'''
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
fd, directory = int(sys.argv[1]), sys.argv[2]
data = b''
while True:
    chunk = os.read(fd, 4096)
    if not chunk:
        break
    data += chunk
lines = data.decode().split('\n')
if 'done' in lines:
    sys.exit(0)

def alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rpartition(')')[2].split()[0] != 'Z'
    except OSError:
        return False

for line in lines:
    if line.startswith('pid '):
        _, pid, sig = line.split()
        pid, sig = int(pid), int(sig)
        try:
            os.kill(pid, sig)
        except OSError:
            continue
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
shutil.rmtree(directory, ignore_errors=True)
'''


class _Watcher:
    """Stops the given processes and removes `directory` if this process dies first."""

    def __init__(self, directory):
        rfd, self._wfd = os.pipe()  # both non-inheritable; rfd is passed explicitly
        try:
            self._proc = subprocess.Popen(
                [sys.executable, '-c', _WATCHER, str(rfd), directory], pass_fds=(rfd,),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(rfd)

    def watch(self, pid, sig):
        os.write(self._wfd, f'pid {pid} {int(sig)}\n'.encode())

    def done(self):
        """Normal stop: everything is cleaned up already; the watcher exits without acting."""
        if self._wfd is not None:
            os.write(self._wfd, b'done\n')
            os.close(self._wfd)
            self._wfd = None
            self._proc.wait(10)


# -- servers -----------------------------------------------------------------------------------

class _Server:
    name = 'server'
    stop_signal = signal.SIGTERM
    crash_signal = signal.SIGKILL

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix=f'fl-{self.name}-', dir=_short_tmp())
        self.proc = None
        self.log_path = os.path.join(self.dir, f'{self.name}.log')
        self._watcher = None
        self._stopped = False
        try:
            self._watcher = _Watcher(self.dir)
            atexit.register(self.stop)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _check_sock(self, path):
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ServerFailed(f'Unix socket path too long for sun_path ({len(path)} bytes): {path}')
        return path

    def _spawn(self, argv, **kw):
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, close_fds=True, **kw)
        self._watcher.watch(self.proc.pid, self.crash_signal)

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors='replace') as f:
                return ''.join(f.readlines()[-n:])
        except OSError:
            return '(no log)'

    def _wait_ready(self, ready):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f'{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}')
            if ready():
                return
            time.sleep(0.05)
        raise ServerFailed(f'{self.name} not ready after {START_TIMEOUT}s:\n{self.log_tail()}')

    def start(self, attempts=3):
        """Start on a free port; retry with another port if that one was taken meanwhile."""
        try:
            for attempt in range(attempts):
                self.port = free_port()
                try:
                    self._start()
                    return self
                except ServerFailed:
                    self._kill()
                    if attempt == attempts - 1 or 'in use' not in self.log_tail():
                        raise
        except BaseException:
            self.stop()
            raise

    def _kill(self):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self._watcher is not None:
                self._watcher.done()


class PostgresServer(_Server):
    """initdb + postgres on 127.0.0.1:<port> and <dir>/.s.PGSQL.<port>, with TLS (a trustme CA)."""

    name = 'pg'
    # immediate shutdown: the cluster is thrown away, no shutdown checkpoint needed
    stop_signal = signal.SIGQUIT
    crash_signal = signal.SIGQUIT
    user = 'postgres'
    database = 'postgres'
    host = '127.0.0.1'

    def __init__(self):
        import trustme  # noqa: PLC0415 - only the PostgreSQL fixture needs it

        self.bindir = postgres_bindir()
        super().__init__()
        self.data = os.path.join(self.dir, 'data')
        self.ca = trustme.CA()
        cert = self.ca.issue_cert('127.0.0.1', 'localhost')
        self.cert_file = os.path.join(self.dir, 'server.crt')
        self.key_file = os.path.join(self.dir, 'server.key')
        cert.cert_chain_pems[0].write_to_path(self.cert_file)
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(self.cert_file, append=True)
        cert.private_key_pem.write_to_path(self.key_file)
        os.chmod(self.key_file, 0o600)
        self._as_user = {}
        if _is_root():
            import pwd  # noqa: PLC0415

            try:
                pw = pwd.getpwnam('postgres')
            except KeyError:
                self.stop()
                raise ServerMissing('running as root, and there is no `postgres` user to run PostgreSQL as: '
                                    'run `make services` (apt-get install -y postgresql)') from None
            for path in (self.dir, self.cert_file, self.key_file):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self._as_user = {'user': pw.pw_uid, 'group': pw.pw_gid, 'extra_groups': []}
        self._env = {'PATH': '/usr/bin:/bin', 'LC_ALL': 'C', 'LANG': 'C', 'HOME': self.dir}

    @property
    def sockdir(self):
        return self.dir

    @property
    def sock_path(self):
        return os.path.join(self.dir, f'.s.PGSQL.{self.port}')

    def _start(self):
        self._check_sock(self.sock_path)
        if not os.path.isdir(self.data):
            r = subprocess.run(
                [os.path.join(self.bindir, 'initdb'), '-D', self.data, '-U', self.user, '-A', 'trust',
                 '-E', 'UTF8', '--locale=C', '-N'],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self._env, cwd=self.dir,
                timeout=120, **self._as_user)
            if r.returncode:
                raise ServerFailed(f'initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}')
        settings = {
            'listen_addresses': self.host, 'port': self.port, 'unix_socket_directories': self.dir,
            'ssl': 'on', 'ssl_cert_file': self.cert_file, 'ssl_key_file': self.key_file,
            'max_connections': 100, 'fsync': 'off', 'synchronous_commit': 'off',
            'full_page_writes': 'off', 'synchronize_seqscans': 'off', 'logging_collector': 'off',
            'log_min_messages': 'warning', 'shared_buffers': '32MB',
        }
        argv = [os.path.join(self.bindir, 'postgres'), '-D', self.data]
        for k, v in settings.items():
            argv += ['-c', f'{k}={v}']
        self._spawn(argv, env=self._env, cwd=self.dir, **self._as_user)
        self._wait_ready(self._ready)

    def _ready(self):
        # postmaster.pid's 8th line is the postmaster status: "ready" once it accepts connections
        try:
            with open(os.path.join(self.data, 'postmaster.pid')) as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == 'ready' and os.path.exists(self.sock_path)

    def ssl_context(self):
        """A client context that verifies the server's certificate (and its 127.0.0.1 address)."""
        import ssl  # noqa: PLC0415

        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        return ctx

    def connect_kwargs(self, *, unix=False, **kw):
        host = self.sockdir if unix else self.host
        return {'host': host, 'port': self.port, 'user': self.user, 'database': self.database,
                'ssl': False, **kw}


class RedisServer(_Server):
    """redis-server on 127.0.0.1:<port> and <dir>/redis.sock, no persistence."""

    name = 'redis'
    stop_signal = signal.SIGTERM
    crash_signal = signal.SIGTERM
    host = '127.0.0.1'

    def __init__(self):
        self.binary = redis_binary()
        super().__init__()

    @property
    def unix_path(self):
        return os.path.join(self.dir, 'redis.sock')

    def _start(self):
        self._check_sock(self.unix_path)
        argv = [self.binary, '--port', str(self.port), '--bind', self.host,
                '--unixsocket', self.unix_path, '--unixsocketperm', '700',
                '--save', '', '--appendonly', 'no', '--dir', self.dir, '--daemonize', 'no',
                '--logfile', '', '--databases', '16', '--protected-mode', 'yes']
        self._spawn(argv, cwd=self.dir)
        self._wait_ready(self._ready)

    def _ready(self):
        if not os.path.exists(self.unix_path):
            return False
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(self.unix_path)
                s.sendall(b'PING\r\n')
                unix_ok = s.recv(64).startswith(b'+PONG')
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                s.sendall(b'PING\r\n')
                return unix_ok and s.recv(64).startswith(b'+PONG')
        except OSError:
            return False
