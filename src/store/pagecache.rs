//! SQLite's own page cache behind a thin layer that keeps one page-swap trick from
//! making every later commit scan the whole cache.
//!
//! When SQLite rebalances b-tree pages it puts their numbers in ascending order by
//! swapping them through a temporary number: the lock page, at the 1 GiB mark (page
//! 262,145 for 4 KiB pages). The default cache remembers the largest number it has
//! seen, and a commit drops every cached page above the database's size: with that
//! remembered number far above it, the commit walks every page of the cache instead of
//! the few at the end. On the writer connection (16 MiB of cache, a swap in most
//! turns) that walk was 2% of the whole service's CPU time, nearly all of it cache
//! misses on page headers.
//!
//! This layer hands the temporary number to the default cache as page 0, which SQLite
//! never uses (pages count from 1), and passes everything else through unchanged. The
//! lock page itself never holds data either, so the two numbers trade places one for
//! one: every lookup, move and release of the temporary page reaches the same entry
//! it would have, and no other page's number changes.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// SQLite's lock byte offset (`PENDING_BYTE`): the page holding it is never used for
/// data, and balancing swaps pages through its number.
const PENDING_BYTE: c_uint = 0x4000_0000;

/// SQLite's default page cache methods, read before ours replace them.
static DEFAULT: OnceLock<Methods> = OnceLock::new();

struct Methods(ffi::sqlite3_pcache_methods2);

// SAFETY: the default cache's methods are safe to call from any thread (SQLite guards
// its caches itself); `pArg` is the default cache's own argument, only passed back.
unsafe impl Send for Methods {}
// SAFETY: as above; the struct is never written after `install` stores it.
unsafe impl Sync for Methods {}

static SWAPS: AtomicU64 = AtomicU64::new(0);

/// One cache: the default cache's and the number that stands for the lock page.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    lock_page: c_uint,
}

/// Puts the layer in front of SQLite's default page cache for every connection this
/// process opens afterwards. Returns false, changing nothing, when SQLite has already
/// started (or the layer is in already).
///
/// # Safety
/// No other thread may use SQLite while this runs: SQLite reads and writes its
/// configuration without a lock. The start of `main` is the place.
pub unsafe fn install() -> bool {
    let mut default = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
    // SAFETY: GETPCACHE2 writes one methods struct through the pointer; the caller
    // guarantees no other thread is inside SQLite. Before SQLite starts it sets its
    // default cache first if none is set.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, default.as_mut_ptr()) };
    if rc != ffi::SQLITE_OK {
        return false;
    }
    // SAFETY: SQLite filled it in.
    let default = unsafe { default.assume_init() };
    if default.xCreate.is_none() || DEFAULT.set(Methods(default)).is_err() {
        return false;
    }
    let ours = ffi::sqlite3_pcache_methods2 {
        iVersion: 1,
        pArg: std::ptr::null_mut(),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        xCreate: Some(create),
        xCachesize: Some(cachesize),
        xPagecount: Some(pagecount),
        xFetch: Some(fetch),
        xUnpin: Some(unpin),
        xRekey: Some(rekey),
        xTruncate: Some(truncate),
        xDestroy: Some(destroy),
        xShrink: Some(shrink),
    };
    // SAFETY: SQLite copies the struct; the functions live as long as the process.
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PCACHE2,
            &ours as *const ffi::sqlite3_pcache_methods2,
        )
    };
    rc == ffi::SQLITE_OK
}

/// How many times SQLite has swapped a page through the lock page's number since
/// `install`: each one would have left the default cache scanning itself in full at the
/// next commit.
pub fn lock_page_swaps() -> u64 {
    SWAPS.load(Ordering::Relaxed)
}

fn default() -> &'static ffi::sqlite3_pcache_methods2 {
    &DEFAULT
        .get()
        .expect("SQLite calls the layer's methods only after install recorded the default")
        .0
}

impl Cache {
    fn key(&self, page: c_uint) -> c_uint {
        if page == self.lock_page {
            0
        } else {
            page
        }
    }
}

/// # Safety
/// `p` is a pointer `create` returned and `destroy` has not yet freed.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    &*(p as *const Cache)
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    let d = default();
    match d.xInit {
        Some(f) => f(d.pArg),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn shutdown(_: *mut c_void) {
    let d = default();
    if let Some(f) = d.xShutdown {
        f(d.pArg)
    }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = (default().xCreate.expect("checked by install"))(page_size, extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    let lock_page = PENDING_BYTE / (page_size.max(1) as c_uint) + 1;
    Box::into_raw(Box::new(Cache { inner, lock_page })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    if let Some(f) = default().xCachesize {
        f(cache(p).inner, n)
    }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    match default().xPagecount {
        Some(f) => f(cache(p).inner),
        None => 0,
    }
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    page: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    match default().xFetch {
        Some(f) => f(c.inner, c.key(page), create),
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = default().xUnpin {
        f(cache(p).inner, page, discard)
    }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(p);
    if new == c.lock_page {
        SWAPS.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(f) = default().xRekey {
        f(c.inner, page, c.key(old), c.key(new))
    }
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    if let Some(f) = default().xTruncate {
        f(cache(p).inner, limit)
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p as *mut Cache);
    if let Some(f) = default().xDestroy {
        f(c.inner)
    }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(f) = default().xShrink {
        f(cache(p).inner)
    }
}
