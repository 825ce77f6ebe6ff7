"""The legacy event loop policy (``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())``)."""

import asyncio

from ._loop import Loop

__all__ = ('EventLoopPolicy',)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, creating ferroloop loops.

    get_event_loop()/set_event_loop()/new_event_loop() behave as asyncio's (including the
    deprecation warnings of the running Python version); only the loop class differs.
    """

    def _loop_factory(self):
        return Loop()

    def __repr__(self):
        return f'<{type(self).__module__}.{type(self).__qualname__} object at {id(self):#x}>'
