"""Where the bytes of an idle connection go: one server in this process, N idle connections
opened by a child process, tracemalloc snapshots (before/after) diffed by allocation site, the
malloc heap (mallinfo2) and RSS growth per connection, and sys.getsizeof of one transport's parts.

    python bench/echo/memory_breakdown.py [--loop ferroloop|asyncio|uvloop|rloop]
                                          [--style protocol|streams] [-n 10000] [--frames 1]

tracemalloc sees Python objects (including ferroloop's Rust-defined ones); Rust heap
allocations (the io registry, boxed buffers) show only in the malloc figure, which here also
holds tracemalloc's own bookkeeping. See bench/README.md, "Memory per idle connection".
"""
import asyncio, gc, os, socket, subprocess, sys, tracemalloc, ctypes, argparse, resource

p = argparse.ArgumentParser()
p.add_argument('--loop', default='ferroloop')
p.add_argument('--style', default='protocol')
p.add_argument('-n', type=int, default=10000)
p.add_argument('--frames', type=int, default=1)
p.add_argument('--top', type=int, default=25)
p.add_argument('--group', default='traceback')
a = p.parse_args()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

if a.loop == 'ferroloop':
    import ferroloop; loop = ferroloop.new_event_loop()
elif a.loop == 'uvloop':
    import uvloop; loop = uvloop.new_event_loop()
elif a.loop == 'rloop':
    import rloop; loop = rloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena','ordblks','smblks','hblks','hblkhd','usmblks','fsmblks','uordblks','fordblks','keepcost')]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
def malloc_used():
    m = libc.mallinfo2(); return m.uordblks + m.hblkhd
def rss():
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

count = 0
transports = []
class IdleProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        global count
        self.transport = transport; count += 1
        if len(transports) < 1: transports.append(transport)
async def handler(reader, writer):
    global count
    count += 1
    await reader.read()

async def main():
    if a.style == 'protocol':
        srv = await loop.create_server(IdleProtocol, '127.0.0.1', 0, backlog=4096)
    else:
        srv = await asyncio.start_server(handler, '127.0.0.1', 0, backlog=4096)
    return srv
srv = loop.run_until_complete(main())
port = srv.sockets[0].getsockname()[1]
client = subprocess.Popen([sys.executable, '-c', f'''
import socket, sys, resource
s,h=resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE,(h,h))
socks=[]
for line in sys.stdin:
    k=int(line)
    for _ in range(k): socks.append(socket.create_connection(("127.0.0.1",{port})))
    print(len(socks), flush=True)
'''], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

def open_n(n):
    target = count + n
    done = 0
    while done < n:
        k = min(500, n - done)
        client.stdin.write(f'{k}\n'); client.stdin.flush()
        done += k
        async def wait():
            while count < target - (n - done):
                await asyncio.sleep(0.005)
        loop.run_until_complete(wait())
    loop.run_until_complete(asyncio.sleep(0.05))

tracemalloc.start(a.frames)
open_n(100)
gc.collect()
s0 = tracemalloc.take_snapshot(); m0 = malloc_used(); r0 = rss(); t0 = tracemalloc.get_traced_memory()[0]
open_n(a.n)
gc.collect()
s1 = tracemalloc.take_snapshot(); m1 = malloc_used(); r1 = rss(); t1 = tracemalloc.get_traced_memory()[0]
N = a.n
print(f'{a.loop} {a.style}: RSS {(r1-r0)/N:.0f} B/conn, malloc-used {(m1-m0)/N:.0f} B/conn, tracemalloc {(t1-t0)/N:.0f} B/conn')
stats = s1.compare_to(s0, a.group)
tot = 0
for st in stats[:a.top]:
    tot += st.size_diff
    fr = st.traceback.format()
    print(f'{st.size_diff/N:8.1f} B {st.count_diff/N:6.2f} blk  ' + ' <- '.join(l.strip() for l in fr[-2::-2][:a.frames]))
print(f'top {a.top}: {tot/N:.0f} B/conn of {sum(s.size_diff for s in stats)/N:.0f}')
if transports:
    tr = transports[0]
    print('transport', type(tr), sys.getsizeof(tr))
    for name in ('_core', '_sock', 'write', '_peer', '_extra'):
        try:
            o = getattr(tr, name)
            print(' ', name, type(o).__name__, sys.getsizeof(o))
        except Exception as e:
            print(' ', name, e)
client.stdin.close(); client.wait()
