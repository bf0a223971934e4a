# A Python client of the Rust manager server (multiprocess::manager::python): every type
# SyncManager serves, with Python's results and exception types. argv: address (a socket path,
# or host:port), the key in hex. Prints "OK <checks>" at the end, or "FAIL ..." and exits 1.
import queue
import sys
import threading
import time
from multiprocessing.managers import SyncManager

addr, key = sys.argv[1], bytes.fromhex(sys.argv[2])
if addr.startswith('/'):
    address = addr
else:
    host, port = addr.rsplit(':', 1)
    address = (host, int(port))
m = SyncManager(address=address, authkey=key)
m.connect()
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print('FAIL', what, flush=True)
        sys.exit(1)
    checks += 1


def raises(exc, f, *a, **k):
    global checks
    try:
        f(*a, **k)
    except exc:
        checks += 1
        return
    except Exception as e:
        print('FAIL', getattr(f, '__name__', f), 'raised', type(e).__name__, e, 'not', exc, flush=True)
        sys.exit(1)
    print('FAIL', getattr(f, '__name__', f), 'did not raise', exc, flush=True)
    sys.exit(1)


# dict: 1, 1.0 and True are one key, and the first key object stays
d = m.dict({'a': 1})
d[1] = 'one'
d[1.0] = 'uno'
check(d[True] == 'uno' and len(d) == 2, 'dict: 1 == 1.0 == True')
check(d.keys() == ['a', 1] and type(d.keys()[1]) is int, 'dict: the first key stays %r' % d.keys())
raises(KeyError, d.__getitem__, 'missing')
check(d.get('missing', 5) == 5 and d.get('missing') is None, 'dict.get')
check(sorted(map(str, d)) == ['1', 'a'], 'dict: iteration through an Iterator proxy')
check('a' in d and 'zz' not in d, 'dict: in')
d.update({'b': 2}, c=3)
check(d.copy() == {'a': 1, 1: 'uno', 'b': 2, 'c': 3}, 'dict.update, copy: %r' % d.copy())
check(d.pop('b') == 2 and d.pop('b', 7) == 7, 'dict.pop')
raises(KeyError, d.pop, 'b')
check(d.setdefault('z', []) == [] and d.setdefault('z', 1) == [], 'dict.setdefault')
check(d.popitem() == ('z', []), 'dict.popitem')
del d['c']
raises(KeyError, d.__delitem__, 'c')
raises(TypeError, d.__setitem__, [1], 2)
check(d.items() == [('a', 1), (1, 'uno')] and d.values() == [1, 'uno'], 'dict.items, values')
check(str(d) == "{'a': 1, 1: 'uno'}", 'str(dict proxy): %r' % str(d))
check(d._getvalue() == {'a': 1, 1: 'uno'}, 'dict _getvalue')
d.clear()
check(len(d) == 0, 'dict.clear')
raises(KeyError, m.dict().popitem)
bigk = m.dict()
bigk[2 ** 64] = 'big'
check(bigk[2.0 ** 64] == 'big' and (2 ** 63 + 1) not in m.dict({2.0 ** 63: 1}), 'dict: big ints and whole floats')
nans = m.dict({float('nan'): 1})
check(float('nan') not in nans and len(nans) == 1, 'dict: a NaN is only itself')
nested = m.dict({(1, 'x'): {'deep': [1, 2.5, None, b'\x00', True]}})
check(nested[(1.0, 'x')] == {'deep': [1, 2.5, None, b'\x00', True]}, 'dict: tuple keys, nested values')

# list: negative indices, slices, iteration by __getitem__
l = m.list([3, 1, 2])
check(l[-1] == 2 and l[0:2] == [3, 1] and l[::-1] == [2, 1, 3], 'list: indices and slices')
raises(IndexError, l.__getitem__, 5)
raises(IndexError, l.__getitem__, -4)
raises(TypeError, l.__getitem__, 'a')
l.append(4)
l.extend([5, 6])
l += [7]
check(len(l) == 7, 'list: append, extend, +=')
l[1:3] = ['x']
check(l[:] == [3, 'x', 4, 5, 6, 7], 'list: slice assignment %r' % l[:])
del l[0]
del l[::2]
check(list(l) == [4, 6], 'list: del slice, iteration %r' % l[:])
l.insert(0, 9)
l.insert(-1, 8)
check(l[:] == [9, 4, 8, 6], 'list.insert %r' % l[:])
check(l.index(8) == 2 and l.count(4) == 1 and l.index(4.0) == 1, 'list.index, count')
raises(ValueError, l.index, 100)
l.remove(9)
raises(ValueError, l.remove, 9)
l.sort()
check(l[:] == [4, 6, 8], 'list.sort')
l.sort(reverse=True)
check(l[:] == [8, 6, 4], 'list.sort(reverse=True)')
l.reverse()
check(l.pop() == 8 and l.pop(0) == 4, 'list.pop')
raises(IndexError, m.list().pop)
check(l + [1] == [6, 1] and l * 2 == [6, 6], 'list + and *')
l *= 2
check(l[:] == [6, 6] and list(reversed(l)) == [6, 6], 'list *=, reversed')
raises(ValueError, l.__setitem__, slice(None, None, 2), [1, 2, 3])
raises(TypeError, m.list([1, 'a']).sort)
check(4.0 in m.list([4]) and True in m.list([1]), 'list: in with 4 == 4.0')
check(str(m.list(['a', (1,)])) == "['a', (1,)]", 'str(list proxy)')

# Namespace
ns = m.Namespace(x=1)
ns.y = 'two'
check(ns.x == 1 and ns.y == 'two', 'Namespace attributes')
raises(AttributeError, getattr, ns, 'zz')
del ns.x
raises(AttributeError, getattr, ns, 'x')
check(str(ns) == "Namespace(y='two')", 'str(Namespace): %r' % str(ns))
check(ns._getvalue().y == 'two', 'Namespace _getvalue')

# Value
v = m.Value('i', 3)
v.value += 1
check(v.value == 4 and v.get() == 4, 'Value')
check(v._getvalue().value == 4 and repr(v._getvalue()) == "Value('i', 4)", 'Value _getvalue')

# Array
a = m.Array('i', [1, 2, 3])
a[0] = 10
check(a[0] == 10 and a[-1] == 3 and len(a) == 3 and list(a) == [10, 2, 3], 'Array')
check(a[0:2].tolist() == [10, 2] and a[0:2].typecode == 'i', 'Array slice is an array')
raises(TypeError, a.__setitem__, 0, 1.5)
raises(OverflowError, a.__setitem__, 0, 2 ** 40)
raises(IndexError, a.__getitem__, 3)
fa = m.Array('d', [0.5])
check(fa[0] == 0.5, 'Array of doubles')

# Queue, JoinableQueue
q = m.Queue(2)
q.put(1)
q.put_nowait(2)
check(q.full() and q.qsize() == 2, 'Queue full')
raises(queue.Full, q.put_nowait, 3)
raises(queue.Full, q.put, 3, timeout=0.05)
check(q.get() == 1 and q.get_nowait() == 2 and q.empty(), 'Queue get')
raises(queue.Empty, q.get_nowait)
t0 = time.monotonic()
raises(queue.Empty, q.get, True, 0.1)
check(time.monotonic() - t0 >= 0.1, 'Queue get timeout waited')
raises(ValueError, q.get, True, -1)
jq = m.JoinableQueue()
jq.put('job')


def work():
    jq.get()
    jq.task_done()


th = threading.Thread(target=work)
th.start()
jq.join()
th.join()
raises(ValueError, jq.task_done)
if sys.version_info >= (3, 13):
    sq = m.Queue()
    sq.put(1)
    sq.shutdown()
    raises(queue.ShutDown, sq.put, 2)
    check(sq.get() == 1, 'a shut-down queue still gives what it holds')
    raises(queue.ShutDown, sq.get)
    iq = m.JoinableQueue()
    iq.put(1)
    iq.shutdown(immediate=True)
    raises(queue.ShutDown, iq.get)
    iq.join()  # the dropped item counts as done

# Lock, RLock, Semaphore, BoundedSemaphore
lk = m.Lock()
check(lk.acquire() and not lk.acquire(False), 'Lock')
lk.release()
raises(RuntimeError, lk.release)
with lk:
    check(not lk.acquire(False), 'Lock as a context manager')
check(lk.acquire(timeout=0.05), 'Lock acquire with a timeout')
lk.release()
rl = m.RLock()
check(rl.acquire() and rl.acquire(), 'RLock reentrant')
rl.release()
rl.release()
raises(RuntimeError, rl.release)
rl.acquire()
got = []
th = threading.Thread(target=lambda: got.append(rl.acquire(False)))
th.start()
th.join()
check(got == [False], 'RLock held by another thread')
rl.release()
s = m.Semaphore(2)
check(s.acquire() and s.acquire() and not s.acquire(False), 'Semaphore')
t0 = time.monotonic()
check(not s.acquire(timeout=0.1) and time.monotonic() - t0 >= 0.1, 'Semaphore timeout waited')
s.release()
s.release()
bs = m.BoundedSemaphore(1)
raises(ValueError, bs.release)

# Event
e = m.Event()
check(not e.is_set() and not e.wait(0.05), 'Event unset')
e.set()
check(e.wait() and e.is_set(), 'Event set')
e.clear()
check(not e.is_set(), 'Event clear')

# Condition
c = m.Condition()
raises(RuntimeError, c.wait, 0.01)
raises(RuntimeError, c.notify)
box = []


def waiter():
    with c:
        box.append(c.wait(10))


th = threading.Thread(target=waiter)
th.start()
deadline = time.monotonic() + 10
while not box and time.monotonic() < deadline:
    with c:
        c.notify()
    time.sleep(0.01)
th.join()
check(box == [True], 'Condition notify wakes a waiter')
with c:
    check(c.wait(0.05) is False, 'Condition wait times out')
    check(c.wait_for(lambda: True), 'Condition wait_for')
c2 = m.Condition(m.Lock())
with c2:
    c2.notify_all()

# Barrier
b = m.Barrier(2)
check(b.parties == 2 and b.n_waiting == 0 and not b.broken, 'Barrier attributes')
r = []
th = threading.Thread(target=lambda: r.append(b.wait()))
th.start()
r.append(b.wait())
th.join()
check(sorted(r) == [0, 1], 'Barrier passes: %r' % r)
import threading as _t
raises(_t.BrokenBarrierError, b.wait, 0.05)
check(b.broken, 'Barrier broken by a timeout')
b.reset()
check(not b.broken, 'Barrier reset')

# what a thread takes stays taken when the thread ends (its connection closes): a Lock used as a
# signal, a bounded buffer's slots, a counting semaphore's permits
lk2 = m.Lock()
t = threading.Thread(target=lk2.acquire)
t.start()
t.join()
time.sleep(0.3)
lk2.release()
slots = m.BoundedSemaphore(2)
t = threading.Thread(target=lambda: [slots.acquire() for _ in range(2)])
t.start()
t.join()
time.sleep(0.3)
check(not slots.acquire(False), 'slots stay taken after the taker thread ended')
slots.release()
slots.release()
items = m.Semaphore(0)
for _ in range(3):
    items.release()
t = threading.Thread(target=lambda: [items.acquire() for _ in range(3)])
t.start()
t.join()
time.sleep(0.3)
check(not items.acquire(False), 'no phantom permits after the consumer thread ended')

# a sort that fails leaves the list as it was
bad = m.list([3, 'a', 1])
raises(TypeError, bad.sort)
check(bad[:] == [3, 'a', 1], 'a failed sort keeps the list: %r' % bad[:])
check(m.list() * (2 ** 62) == [], 'an empty list times a huge number')

# timeouts as threading's types read them
check(m.Lock().acquire(timeout=-1), 'Lock.acquire(timeout=-1) waits without a deadline')
check(not m.Semaphore(0).acquire(timeout=-1), 'Semaphore.acquire(timeout=-1) does not wait')
check(not m.Event().wait(-1), 'Event.wait(-1) does not wait')

# what a constructor raises is a RemoteError, as CPython's server sends it
from multiprocessing.managers import RemoteError
raises(RemoteError, m.list, 5)
raises(RemoteError, m.Semaphore, -1)

# a method not exposed, and a server-side fault, are RemoteErrors (as _TestMyManager checks)
raises(RemoteError, m.dict()._callmethod, '_hidden')
raises(RemoteError, m.list()._callmethod, 'no_such_method')

# control verbs
check(m._number_of_objects() > 0 and 'refcount=' in m._debug_info(), 'number_of_objects, debug_info')
print('OK', checks, flush=True)
