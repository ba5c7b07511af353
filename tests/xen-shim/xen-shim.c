/*
 * xen-shim: an LD_PRELOAD library that lets Debian's real xenstored and xl
 * (Xen 4.17, unpacked by tests/prepare.sh under target/xen, never
 * installed) run on a machine without a Xen hypervisor. Test
 * infrastructure only: nothing here ships.
 *
 * Built by tests/prepare.sh with gcc against the headers of Debian's
 * libxen-dev of the same version (so every prototype and struct layout is
 * the real one). Each function below replaces the library function of the
 * same name; the comment on each says which program calls it and why the
 * fake answer is enough.
 *
 * Why not `xenstored -D` (no domain init) instead of faking? In 4.17 the
 * node database is only created while dom0 is introduced (XSA-326 fixes),
 * so with -D the first request of any kind segfaults; 4.19 removed -D.
 * So xenstored runs normally and introduces a dom0 whose event channel
 * never fires and whose ring page nobody writes: every client talks to it
 * over the unix socket (XENSTORED_PATH), as dom0.
 *
 * Environment read by the constructor (then removed, with LD_PRELOAD and
 * LD_LIBRARY_PATH, so that the hotplug script libxl forks inherits none of
 * it and runs exactly as on a real dom0):
 *   XEN_SHIM_DOMIDS  comma-separated guest domids that xl sees as running
 *                    PV guests (domain 0 always exists).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xen/io/protocols.h>

#define MAX_GUESTS 64
static uint32_t guests[MAX_GUESTS];
static unsigned int n_guests;

/* Reads the guest list, then scrubs the environment (see the header). */
__attribute__((constructor)) static void shim_init(void)
{
    const char *ids = getenv("XEN_SHIM_DOMIDS");
    if (ids) {
        char *copy = strdup(ids), *save = NULL, *tok;
        for (tok = strtok_r(copy, ",", &save); tok && n_guests < MAX_GUESTS;
             tok = strtok_r(NULL, ",", &save)) {
            unsigned long d = strtoul(tok, NULL, 10);
            if (d > 0 && d < DOMID_FIRST_RESERVED)
                guests[n_guests++] = (uint32_t)d;
        }
        free(copy);
    }
    unsetenv("XEN_SHIM_DOMIDS");
    unsetenv("LD_PRELOAD");
    unsetenv("LD_LIBRARY_PATH");
}

/* A distinct non-NULL handle for the opaque handle types. */
static char handle_storage[3];

/* ---- libxenctrl: xenstored and libxl open a handle to the hypervisor
 * (/dev/xen/privcmd). No hypervisor here: hand out a dummy handle that
 * only the fakes below ever see. */
xc_interface *xc_interface_open(xentoollog_logger *logger,
                                xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    (void)logger; (void)dombuild_logger; (void)open_flags;
    return (xc_interface *)&handle_storage[0];
}

int xc_interface_close(xc_interface *xch)
{
    (void)xch;
    return 0;
}

/* ---- xenstored asks whether a domain exists before introducing it and
 * when it checks for dead domains: every domid below DOMID_FIRST_RESERVED
 * exists and runs, so no connection is ever reaped. */
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid,
                      unsigned int max_doms, xc_dominfo_t *info)
{
    (void)xch;
    if (max_doms == 0 || first_domid >= DOMID_FIRST_RESERVED)
        return 0;
    memset(info, 0, sizeof(*info));
    info->domid = first_domid;
    info->running = 1;
    info->max_vcpu_id = 0;
    info->nr_online_vcpus = 1;
    return 1;
}

/* Fixed UUID per domid: 00000000-0000-4000-8000-0000000000NN (hex). */
static void uuid_of(uint32_t domid, xen_domain_handle_t h)
{
    memset(h, 0, sizeof(xen_domain_handle_t));
    h[6] = 0x40;
    h[8] = 0x80;
    h[12] = (uint8_t)(domid >> 24);
    h[13] = (uint8_t)(domid >> 16);
    h[14] = (uint8_t)(domid >> 8);
    h[15] = (uint8_t)domid;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- libxl lists domains (xl list, name/domid lookups, the domain's type
 * before a device add) with this call: domain 0 and the test's guests, in
 * domid order, as running PV domains with fixed UUIDs. */
int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
                          unsigned int max_domains, xc_domaininfo_t *info)
{
    uint32_t all[MAX_GUESTS + 1];
    unsigned int n = 0, i, out = 0;
    (void)xch;
    all[n++] = 0;
    for (i = 0; i < n_guests; i++)
        all[n++] = guests[i];
    qsort(all, n, sizeof(all[0]), cmp_u32);
    for (i = 0; i < n && out < max_domains; i++) {
        if (all[i] < first_domain || (i > 0 && all[i] == all[i - 1]))
            continue;
        xc_domaininfo_t *d = &info[out++];
        memset(d, 0, sizeof(*d));
        d->domain = (domid_t)all[i];
        d->flags = XEN_DOMINF_running;
        d->tot_pages = 65536;
        d->max_pages = 65536;
        d->nr_online_vcpus = 1;
        d->max_vcpu_id = 0;
        uuid_of(all[i], d->handle);
    }
    return (int)out;
}

/* ---- libxl_ctx_alloc and `xl info` ask the hypervisor's version and
 * capabilities: answer as Xen 4.17 (what the tools were built for). */
int xc_version(xc_interface *xch, int cmd, void *arg)
{
    (void)xch;
    switch (cmd) {
    case XENVER_version:
        return (4 << 16) | 17;
    case XENVER_extraversion:
        strcpy((char *)arg, ".7");
        return 0;
    case XENVER_compile_info:
        memset(arg, 0, sizeof(xen_compile_info_t));
        return 0;
    case XENVER_capabilities:
        strcpy((char *)arg, "xen-3.0-x86_64 hvm-3.0-x86_32");
        return 0;
    case XENVER_changeset:
        strcpy((char *)arg, "xen-shim");
        return 0;
    case XENVER_platform_parameters:
        memset(arg, 0, sizeof(xen_platform_parameters_t));
        return 0;
    case XENVER_get_features:
        memset(arg, 0, sizeof(xen_feature_info_t));
        return 0;
    case XENVER_pagesize:
        return 4096;
    case XENVER_commandline:
        memset(arg, 0, sizeof(xen_commandline_t));
        return 0;
    case XENVER_build_id:
        errno = ENOSYS;
        return -1;
    default:
        memset(arg, 0, 16);
        return 0;
    }
}

/* ---- libxl reads the host's memory and CPUs (free memory checks, xl
 * info): one CPU, 1 GiB, all of it free. */
int xc_physinfo(xc_interface *xch, xc_physinfo_t *info)
{
    (void)xch;
    memset(info, 0, sizeof(*info));
    info->threads_per_core = 1;
    info->cores_per_socket = 1;
    info->nr_cpus = 1;
    info->max_cpu_id = 0;
    info->nr_nodes = 1;
    info->max_node_id = 0;
    info->cpu_khz = 1000000;
    info->total_pages = 262144;
    info->free_pages = 262144;
    info->capabilities = XEN_SYSCTL_PHYSCAP_pv;
    return 0;
}

/* ---- libxl's physinfo also asks for memory sharing counters: none. */
long xc_sharing_freed_pages(xc_interface *xch)
{
    (void)xch;
    return 0;
}

long xc_sharing_used_frames(xc_interface *xch)
{
    (void)xch;
    return 0;
}

/* ---- libxl asks the guest's ABI for a device's `protocol` node: the
 * native x86_64 one, as for a 64-bit PV guest. */
const char *xc_domain_get_native_protocol(xc_interface *xch, uint32_t domid)
{
    (void)xch; (void)domid;
    return XEN_IO_PROTO_ABI_X86_64;
}

/* ---- XSM/FLASK (security labels, xl's seclabel handling): not built into
 * this "hypervisor", the answer a Xen without FLASK gives. */
#define FLASK_ENOSYS { errno = ENOSYS; return -1; }
int xc_flask_op(xc_interface *xch, xen_flask_op_t *op) { (void)xch; (void)op; FLASK_ENOSYS }
int xc_flask_context_to_sid(xc_interface *x, char *b, uint32_t s, uint32_t *sid)
{ (void)x; (void)b; (void)s; (void)sid; FLASK_ENOSYS }
int xc_flask_sid_to_context(xc_interface *x, int sid, char *b, uint32_t s)
{ (void)x; (void)sid; (void)b; (void)s; FLASK_ENOSYS }
int xc_flask_getenforce(xc_interface *x) { (void)x; FLASK_ENOSYS }
int xc_flask_setenforce(xc_interface *x, int m) { (void)x; (void)m; FLASK_ENOSYS }
int xc_flask_policyvers(xc_interface *x) { (void)x; FLASK_ENOSYS }

/* ---- libxenevtchn: xenstored binds dom0's xenbus port and the
 * "domain died" VIRQ, libxl binds ports while it waits. No hypervisor, so
 * no event ever arrives: the fd is an eventfd nobody writes, so poll()
 * never reports it and xenevtchn_pending is never reached. Ports count up
 * so that each bind gets a distinct one. */
struct fake_evtchn {
    int fd;
};
static evtchn_port_t next_port = 10;

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger,
                                 unsigned int flags)
{
    (void)logger;
    struct fake_evtchn *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->fd = eventfd(0, EFD_NONBLOCK | ((flags & XENEVTCHN_NO_CLOEXEC) ? 0 : EFD_CLOEXEC));
    if (h->fd < 0) {
        free(h);
        return NULL;
    }
    return (xenevtchn_handle *)h;
}

/* Live update re-opens an inherited fd: treat it as ours. */
xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd,
                                    unsigned open_flags)
{
    (void)logger; (void)open_flags;
    struct fake_evtchn *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->fd = fd;
    return (xenevtchn_handle *)h;
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    struct fake_evtchn *h = (struct fake_evtchn *)xce;
    if (!h)
        return 0;
    close(h->fd);
    free(h);
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    return ((struct fake_evtchn *)xce)->fd;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce,
                                                      uint32_t domid)
{
    (void)xce; (void)domid;
    return (xenevtchn_port_or_error_t)next_port++;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce,
                                                     uint32_t domid,
                                                     evtchn_port_t remote_port)
{
    (void)xce; (void)domid; (void)remote_port;
    return (xenevtchn_port_or_error_t)next_port++;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce,
                                              unsigned int virq)
{
    (void)xce; (void)virq;
    return (xenevtchn_port_or_error_t)next_port++;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

/* Never reached through poll(); if it is, report "nothing pending". */
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    (void)xce;
    errno = EAGAIN;
    return -1;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce; (void)port;
    return 0;
}

int xenevtchn_restrict(xenevtchn_handle *xce, domid_t domid)
{
    (void)xce; (void)domid;
    return 0;
}

/* ---- libxengnttab: xenstored maps a guest's ring page when the guest is
 * introduced. No guest writes to it here: an anonymous zeroed page is a
 * ring with nothing in it. */
xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger,
                                 unsigned open_flags)
{
    (void)logger; (void)open_flags;
    return (xengnttab_handle *)&handle_storage[1];
}

int xengnttab_close(xengnttab_handle *xgt)
{
    (void)xgt;
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt; (void)nr_grants;
    return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid,
                              uint32_t ref, int prot)
{
    (void)xgt; (void)domid; (void)ref;
    void *p = mmap(NULL, 4096, prot | PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return munmap(start_address, (size_t)count * 4096);
}

/* ---- open(): xenstored reads dom0's xenbus event channel port from
 * /proc/xen/xsd_port and maps dom0's ring page from /proc/xen/xsd_kva,
 * both made by the xenbus driver of a dom0 kernel. Here they are a memfd
 * holding a port number and a zeroed page-sized memfd. Every other path
 * goes to the real open(). */
static int fake_file(const char *name, const char *content, off_t size)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (content) {
        size_t len = strlen(content);
        if (write(fd, content, len) != (ssize_t)len || lseek(fd, 0, SEEK_SET) != 0) {
            close(fd);
            return -1;
        }
    }
    if (size && ftruncate(fd, size) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int fake_open(const char *path)
{
    if (strcmp(path, "/proc/xen/xsd_port") == 0)
        return fake_file("xsd_port", "1", 0);
    if (strcmp(path, "/proc/xen/xsd_kva") == 0)
        return fake_file("xsd_kva", NULL, 4096);
    return -2;
}

int open(const char *path, int flags, ...)
{
    static int (*real_open)(const char *, int, ...);
    mode_t mode = 0;
    int fd;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    fd = fake_open(path);
    if (fd != -2)
        return fd;
    if (!real_open)
        real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    static int (*real_open64)(const char *, int, ...);
    mode_t mode = 0;
    int fd;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    fd = fake_open(path);
    if (fd != -2)
        return fd;
    if (!real_open64)
        real_open64 = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open64");
    return real_open64(path, flags, mode);
}
