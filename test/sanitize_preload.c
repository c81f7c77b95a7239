/*
 * test/sanitize_preload.c: a library that scripts/sanitize.sh preloads
 * right after the AddressSanitizer runtime into the uninstrumented
 * PostgreSQL server.
 *
 * With LD_PRELOAD the ASan runtime starts at the first malloc() it sees,
 * which in the postmaster happens inside the constructor of a system library
 * (p11-kit's newlocale(), libgpg-error's bindtextdomain()), while glibc holds
 * its locale or message-catalogue lock.  At start-up the runtime looks for an
 * optional swift_demangle() with dlsym(); when none exists it calls
 * dlerror(), whose message is translated through gettext, which takes the
 * same glibc lock again: the lock's state is corrupted and the postmaster
 * hangs in its own bindtextdomain() call.  Defining swift_demangle() makes
 * the look-up succeed, so dlerror() has no message to translate.
 *
 * The runtime calls it only for names that look like Swift symbols, which
 * PostgreSQL, the extension and the C libraries never have; returning NULL
 * means "not demangled".  Nothing else is defined here.
 */
#include <stddef.h>
#include <stdint.h>

char	   *swift_demangle(const char *mangled, size_t mangled_len, char *out,
						   size_t *out_len, uint32_t flags);

char *
swift_demangle(const char *mangled, size_t mangled_len, char *out,
			   size_t *out_len, uint32_t flags)
{
	return NULL;
}
