"""The slow paths of ferroloop's Rust handles, written against asyncio's own helpers.

Rust calls these only for formatting, errors and debug mode, so the messages are asyncio's
byte for byte on every supported Python version.
"""

import sys
from asyncio import base_events as _be
from asyncio import events as _events
from asyncio import format_helpers as _fh
from asyncio.log import logger as _logger

__all__ = ()

# 'debug' was added to _format_callback_source in a 3.12 patch release: ask the function.
_NEEDS_DEBUG_ARG = 'debug' in _fh._format_callback_source.__code__.co_varnames
_handle_repr_info = _events.Handle._repr_info


def _format_callback(handle):
    if _NEEDS_DEBUG_ARG:
        return _fh._format_callback_source(
            handle._callback, handle._args, debug=handle._loop.get_debug())
    return _fh._format_callback_source(handle._callback, handle._args)


def repr_info(handle):
    """asyncio.Handle._repr_info / TimerHandle._repr_info."""
    info = _handle_repr_info(handle)
    if handle._is_timer:
        info.insert(2 if handle._cancelled else 1, f'when={handle._when}')
    return info


def handle_repr(handle):
    info = repr_info(handle)
    return '<{}>'.format(' '.join(info))


def callback_failed(handle, exc):
    """The ``except BaseException`` branch of asyncio.Handle._run."""
    msg = f'Exception in callback {_format_callback(handle)}'
    context = {
        'message': msg,
        'exception': exc,
        'handle': handle,
    }
    if handle._source_traceback:
        context['source_traceback'] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def source_traceback():
    """Handle.__init__'s debug-mode traceback, taken from the Python frame that called the loop."""
    return _fh.extract_stack(sys._getframe(1))


def slow_callback(handle, dt):
    """The debug-mode warning of asyncio's _run_once."""
    _logger.warning('Executing %s took %.3f seconds', _be._format_handle(handle), dt)
