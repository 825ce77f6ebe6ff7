"""The ``ferroloop`` command line (``python -m ferroloop ...`` or the ``ferroloop`` script).

    python -m ferroloop --version
    python -m ferroloop run SCRIPT [ARGS...]        # like `python SCRIPT ARGS...`, on ferroloop
    python -m ferroloop run -m MODULE [ARGS...]     # like `python -m MODULE ARGS...`, on ferroloop
    python -m ferroloop run --stats SCRIPT [ARGS...] # and print each loop's telemetry at exit

``run`` installs ``ferroloop.EventLoopPolicy()`` as asyncio's event loop policy and then runs the
program as ``__main__`` the way the interpreter itself would, so an unmodified asyncio program runs
on ferroloop whichever way it gets its loop: ``asyncio.run()``, ``asyncio.Runner``,
``get_event_loop()`` + ``run_until_complete()``, or ``new_event_loop()`` in a thread.

What the program sees is what ``python SCRIPT`` would give it:

* ``sys.argv`` is ``[SCRIPT, *ARGS]`` (``[<module file>, *ARGS]`` with ``-m``); ``sys.path[0]`` is the
  script's directory (the current directory with ``-m``), unless ``-P``/``PYTHONSAFEPATH`` is set;
  ``sys.modules['__main__']`` is a fresh module that stays in place until the interpreter exits, and
  ``__file__`` is the script's absolute path. A directory or zip file with a ``__main__.py`` works too.
* An uncaught exception prints the traceback python would print (this command's own frames are
  removed; the ``<frozen runpy>`` frames that python itself shows for ``-m`` stay) through
  ``sys.excepthook``, and the process then ends exactly as python ends: exit status 1 after normal
  interpreter shutdown (non-daemon threads joined, atexit handlers run).
* ``SystemExit`` passes through unchanged (code, message).
* An uncaught ``KeyboardInterrupt`` prints its traceback and, as python does since 3.8, the process
  shuts down normally and then kills itself with SIGINT (status -2 for ``subprocess``, 130 in a
  shell). This is not imitated: the exception is handed back to the interpreter's own top level
  (with the traceback printing already done), which does it.

Programs that choose their loop class themselves are not changed by the policy:

* uvicorn (``run -m uvicorn ...`` or ``run path/to/bin/uvicorn ...``) builds its loop itself:
  ``--loop auto``, its default, means uvloop if installed, else ``asyncio.SelectorEventLoop``. So
  ``run`` passes ``--loop ferroloop:new_event_loop`` when the command line (and ``UVICORN_LOOP``)
  names no loop; ``--loop none`` (uvicorn then asks the policy) and ``--loop ferroloop:...`` are
  kept; any other ``--loop`` stops with a message and status 2 rather than serve on another loop.
* A program that creates ``asyncio.SelectorEventLoop()`` (``asyncio.EventLoop()`` on 3.13, or a
  subclass) itself gets that loop, asyncio's; ``run`` then emits a ``RuntimeWarning`` naming the
  line, so that it never runs on asyncio without saying so.

One difference remains, because the program runs inside this command's functions: stacks that
are *recorded* rather than raised, and deep enough to reach the bottom of the stack, include the
few frames of this module (``ferroloop/__main__.py``) below the program's ``<module>`` frame. In
practice that is only asyncio's debug mode (``Coroutine created at`` of a never-awaited coroutine,
``created at`` tracebacks of handles and tasks) and ``traceback.print_stack()``-style output.
"""

import argparse
import os
import sys

_PROG = 'ferroloop'


def _version_line():
    import ferroloop
    return (f'{_PROG} {ferroloop.__version__} ({ferroloop.BUILD_PROFILE} build, '
            f'Python {sys.version.split()[0]})')


class _VersionAction(argparse.Action):
    # The version needs the extension module: import it only when --version is asked for.
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_line())
        parser.exit()


def _make_parser():
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description='ferroloop: a drop-in replacement for the asyncio event loop, written in Rust.',
        epilog="Run '%(prog)s run -h' for how to run a program on ferroloop.",
    )
    parser.add_argument('--version', action=_VersionAction,
                        help='print the version, build profile and Python version, then exit')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    run = sub.add_parser(
        'run',
        help='run an asyncio program with ferroloop as its event loop',
        description=(
            "Run a Python program as 'python SCRIPT ARGS...' (or 'python -m MODULE ARGS...') "
            "would, with ferroloop.EventLoopPolicy() installed as asyncio's event loop policy, "
            "so that asyncio.run(), asyncio.Runner, get_event_loop()/new_event_loop() (in any "
            "thread) all use ferroloop loops. Output and exit status are those of plain python. "
            "Everything after SCRIPT (or MODULE) is passed to the program untouched, except "
            "for uvicorn, which builds its loop itself: it gets --loop ferroloop:new_event_loop "
            "when it names no loop, and another --loop stops with a message. A program that "
            "creates asyncio.SelectorEventLoop() itself gets a RuntimeWarning."
        ),
    )
    run.add_argument('--stats', action='store_true',
                     help="time every ferroloop loop the program creates and print each loop's "
                          "telemetry (ferroloop.stats) to stderr at exit")
    run.add_argument('-m', dest='module', metavar='MODULE',
                     help='run library module MODULE as a script, like python -m')
    run.add_argument('script', nargs='?', metavar='SCRIPT',
                     help="path of the script (or of a directory / zip file with __main__.py, "
                          "or '-' for standard input)")
    run.add_argument('args', nargs='*', metavar='ARGS', help='arguments for the program')
    parser._run_parser = run
    return parser


def _split_argv(argv):
    """Split argv into (arguments for this CLI, arguments for the program).

    Everything after ``run SCRIPT`` / ``run -m MODULE`` belongs to the program, even if it looks
    like an option (``ferroloop run script.py -h`` passes ``-h`` to script.py), so argparse only
    ever sees the part up to and including SCRIPT/MODULE.
    """
    i = 0
    while i < len(argv) and argv[i].startswith('-'):   # top-level options (-h, --version)
        i += 1
    if i == len(argv) or argv[i] != 'run':
        return argv, []
    j = i + 1
    while j < len(argv):
        arg = argv[j]
        if arg == '-m':
            return argv[:j + 2], argv[j + 2:]
        if arg.startswith('-m') and not arg.startswith('--'):     # -mpkg.mod
            return argv[:j + 1], argv[j + 1:]
        if arg == '--':
            return argv[:j + 2], argv[j + 2:]
        if not arg.startswith('-') or arg == '-':
            return argv[:j + 1], argv[j + 1:]
        j += 1
    return argv, []


def _install_policy():
    import asyncio
    import ferroloop
    asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())
    _warn_on_asyncio_loops()


_ASYNCIO_LOOP_WARNING = (
    "ferroloop run: {name}() creates asyncio's own event loop, so the code using it runs on "
    "asyncio, not on ferroloop; asyncio.run(), asyncio.Runner() and asyncio.new_event_loop() "
    "give ferroloop loops under 'ferroloop run', or pass ferroloop.new_event_loop as the loop "
    "factory")


def _warn_on_asyncio_loops():
    """Make ``asyncio.SelectorEventLoop()`` (= ``asyncio.EventLoop()`` on 3.13) say that it is not
    ferroloop: under the policy nothing in asyncio creates one, only the program itself does."""
    import asyncio
    import functools
    import warnings
    cls = asyncio.SelectorEventLoop
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        name = 'asyncio.' + ('SelectorEventLoop' if type(self) is cls else
                             f'SelectorEventLoop subclass {type(self).__qualname__}')
        warnings.warn(_ASYNCIO_LOOP_WARNING.format(name=name), RuntimeWarning, stacklevel=2)
        original(self, *args, **kwargs)

    cls.__init__ = __init__


# uvicorn's --loop values that serve on ferroloop: 'none' lets asyncio.run() ask the policy.
def _uvicorn_loop_ok(value):
    return value == 'none' or value.startswith(('ferroloop:', 'ferroloop.'))


def _uvicorn_args(args):
    """The arguments to run uvicorn with so that it serves on ferroloop, or exit 2 saying why not."""
    value = os.environ.get('UVICORN_LOOP')
    source = 'UVICORN_LOOP'
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == '--':
            break
        if arg == '--loop' and i + 1 < len(args):
            value, source = args[i + 1], '--loop'
            i += 1
        elif arg.startswith('--loop='):
            value, source = arg[len('--loop='):], '--loop'
        i += 1
    if value is None:
        return ['--loop', 'ferroloop:new_event_loop', *args]
    if _uvicorn_loop_ok(value):
        return list(args)
    print(f"{_PROG} run: uvicorn {source} {value} would serve on "
          f"{'uvloop or asyncio' if value == 'auto' else value}, not on ferroloop (uvicorn "
          f"builds its loop itself). Leave the loop option out ('{_PROG} run' then passes "
          f"--loop ferroloop:new_event_loop), or give --loop ferroloop:new_event_loop.",
          file=sys.stderr)
    sys.exit(2)


def _is_uvicorn(module=None, script=None):
    if module is not None:
        return module in ('uvicorn', 'uvicorn.__main__')
    return script is not None and os.path.basename(script) == 'uvicorn'


def _fresh_main_module():
    """Put a new, empty ``__main__`` module in sys.modules, as the interpreter has at startup."""
    import types
    main = types.ModuleType('__main__')
    main.__builtins__ = sys.modules['builtins']
    sys.modules['__main__'] = main
    return main


def _set_path0(path):
    if sys.flags.safe_path:      # python -P / PYTHONSAFEPATH: python prepends nothing
        return
    if sys.path:
        sys.path[0] = path
    else:
        sys.path.insert(0, path)


def _run_script(script, args):
    """``python SCRIPT ARGS...``"""
    import runpy
    sys.argv = [script, *args]
    if script == '-':
        # `python -`: the program comes from standard input; sys.path[0] is '' then.
        _set_path0('')
        main = _fresh_main_module()
        exec(compile(sys.stdin.read(), '<stdin>', 'exec', dont_inherit=True), main.__dict__)
        return
    if os.path.isdir(script) or _is_zipfile(script):
        # python puts the directory / zip file first on sys.path and runs its __main__ module.
        _set_path0(script)
        main = _fresh_main_module()
        del main
        runpy._run_module_as_main('__main__', alter_argv=False)
        return
    # A plain source (or .pyc) file: compiled and run in a fresh __main__ like python does.
    # (runpy.run_path would run it in a temporary __main__ that is removed again when the
    # top-level code returns, and would set sys.argv[0] to the absolute path.)
    path = os.path.abspath(script)
    _set_path0(os.path.dirname(os.path.realpath(script)))
    main = _fresh_main_module()
    main.__file__ = path
    main.__cached__ = None
    if path.endswith('.pyc'):
        from importlib.machinery import SourcelessFileLoader
        main.__loader__ = SourcelessFileLoader('__main__', path)
        code = main.__loader__.get_code('__main__')
    else:
        from importlib.machinery import SourceFileLoader
        main.__loader__ = SourceFileLoader('__main__', path)
        with open(path, 'rb') as f:      # compile() honours the coding cookie / BOM
            source = f.read()
        code = compile(source, path, 'exec', dont_inherit=True)   # no .pyc written, as python
        del source
    exec(code, main.__dict__)


def _is_zipfile(path):
    import zipfile
    try:
        return os.path.isfile(path) and zipfile.is_zipfile(path)
    except OSError:
        return False


def _run_module(module, args):
    """``python -m MODULE ARGS...``"""
    import runpy
    sys.argv = ['-m', *args]      # as python has it while finding the module
    _set_path0(os.getcwd())
    _fresh_main_module()
    # What python -m itself calls: runs the module in sys.modules['__main__'] (the fresh one
    # above) and sets sys.argv[0] to the module's file.
    runpy._run_module_as_main(module, alter_argv=True)


def _strip_own_frames(tb):
    """Drop the leading traceback entries that belong to this module."""
    while tb is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    return tb


def _cannot_open(script, exc):
    # python's own message for a missing script: `python: can't open file '/abs/x.py': [Errno 2] ...`
    print(f"{sys.executable}: can't open file {os.path.abspath(script)!r}: "
          f"[Errno {exc.errno}] {exc.strerror}", file=sys.stderr)
    return 2


def run(script=None, module=None, args=(), stats=False):
    """Run a program like python would, on ferroloop. Returns only if it ends normally."""
    if module is None and script != '-' and not os.path.isdir(script):
        try:                      # missing or unreadable: python's message and status 2
            open(script, 'rb').close()
        except OSError as exc:
            return _cannot_open(script, exc)
    if _is_uvicorn(module, script):
        args = _uvicorn_args(list(args))
    if stats:
        from ferroloop import _stats
        _stats.track_all_loops()
    _install_policy()
    try:
        if module is not None:
            _run_module(module, list(args))
        else:
            _run_script(script, list(args))
    except SystemExit:
        raise
    except BaseException as exc:
        # Print what python would print: the traceback without our frames, through
        # sys.excepthook (the program may have installed its own) ...
        exc.__traceback__ = _strip_own_frames(exc.__traceback__)
        hook = sys.excepthook
        hook(type(exc), exc, exc.__traceback__)
        # ... then let the exception reach the interpreter's top level, which ends the process
        # exactly as for `python SCRIPT`: status 1, or for KeyboardInterrupt a shutdown followed
        # by death by SIGINT. Only its printing is turned off, as it has already been done.
        sys.excepthook = _SilentOnce(exc, hook)
        raise
    return 0


class _SilentOnce:
    """sys.excepthook that does not print `exc` (already printed) and delegates anything else."""

    def __init__(self, exc, hook):
        self.exc = exc
        self.hook = hook

    def __call__(self, exc_type, exc, tb):
        if exc is self.exc:
            sys.excepthook = self.hook
            return
        self.hook(exc_type, exc, tb)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    cli_argv, program_args = _split_argv(list(argv))
    parser = _make_parser()
    ns = parser.parse_args(cli_argv)
    if ns.command == 'run':
        if ns.module is not None:
            if ns.script is not None:
                program_args = [ns.script, *ns.args, *program_args]
            return run(module=ns.module, args=program_args, stats=ns.stats)
        if ns.script is None:
            # argparse's convention: usage and the error on stderr, exit status 2
            parser._run_parser.error('a program to run is required: SCRIPT or -m MODULE')
        return run(script=ns.script, args=[*ns.args, *program_args], stats=ns.stats)
    parser.error(f'unknown command {ns.command!r}')


if __name__ == '__main__':
    sys.exit(main())
