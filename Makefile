# Makefile for the alipayplus_cancel PostgreSQL extension (PGXS)

MODULE_big = alipayplus_cancel
OBJS = \
	src/module.o \
	src/settings.o \
	src/signing.o \
	src/json.o \
	src/transport.o \
	src/cancel.o \
	src/orders.o \
	src/ledger.o \
	src/guard.o

EXTENSION = alipayplus_cancel
DATA = extension/alipayplus_cancel--1.0.sql \
	extension/alipayplus_cancel--1.0--1.1.sql \
	extension/alipayplus_cancel--1.1--1.2.sql \
	extension/alipayplus_cancel--1.2--1.3.sql
PGFILEDESC = "alipayplus_cancel - Alipay+ cancelPayment from SQL"

# pg_regress suites in sql/ and expected/, isolation specs in specs/.
# They need the cluster, fake gateway and keys set up by scripts/test.sh.
REGRESS = $(shell cat $(srcdir:/=)/test/schedule 2>/dev/null)
REGRESS_OPTS = --load-extension=alipayplus_cancel
ISOLATION = $(shell cat $(srcdir:/=)/test/isolation_schedule 2>/dev/null)

PG_CPPFLAGS = -I$(srcdir:/=)/src $(shell pkg-config --cflags libcurl openssl 2>/dev/null)
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter
SHLIB_LINK = $(shell pkg-config --libs libcurl openssl 2>/dev/null || echo -lcurl -lssl -lcrypto)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Out-of-tree (VPATH) builds, as Debian's pg_buildext does them
# (make -C build-15 -f ../Makefile VPATH=..): the objects and bitcode files go
# to src/ under the build directory, which must exist first.  An absolute path,
# because make would find the source tree's src/ through VPATH.
$(OBJS) $(OBJS:.o=.bc): | $(CURDIR)/src
$(CURDIR)/src:
	$(MKDIR_P) $@
