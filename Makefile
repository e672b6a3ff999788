# kiln: one non-recursive Makefile. `make help` lists the targets.

CC       ?= cc
CFLAGS   ?= -O2 -g
BUILD    ?= build
PREFIX   ?= /usr/local
BINDIR   ?= $(PREFIX)/bin
MANDIR   ?= $(PREFIX)/share/man
DESTDIR  ?=
SAN      ?=
WERROR   ?= -Werror

PKGS     := liburing libzstd libxxhash sqlite3 blkid
WARN     := -Wall -Wextra -Wshadow -Wvla -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
            -Wpointer-arith -Wwrite-strings -Wundef -Wno-missing-field-initializers
CPPFLAGS += -D_GNU_SOURCE -MMD -MP -Iengine/include -Iengine $(shell pkg-config --cflags $(PKGS))
ALL_CFLAGS = $(CFLAGS) -std=gnu11 -pthread $(WARN) $(WERROR) $(SAN)
LDLIBS   := $(shell pkg-config --libs $(PKGS)) -pthread
ALL_LDFLAGS = $(LDFLAGS) $(SAN)

ENGINE_SRCS := $(sort $(wildcard engine/*.c))
ENGINE_OBJS := $(ENGINE_SRCS:%.c=$(BUILD)/%.o)
KILN_SRCS   := $(sort $(wildcard tools/kiln/*.c))
KILN_OBJS   := $(KILN_SRCS:%.c=$(BUILD)/%.o)
NBD_SRCS    := $(sort $(wildcard nbd-server/*.c))
NBD_OBJS    := $(NBD_SRCS:%.c=$(BUILD)/%.o)
UNIT_SRCS   := $(sort $(wildcard tests/unit/test-*.c))
UNIT_BINS   := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
LIBKILN     := $(BUILD)/libkiln.a

.PHONY: all check check-unit check-unit-asan check-integration asan fuzz bench-nbd bench-image bench-launch bench-snapshot bench-snapshot-smoke demo install clean help deps

all: $(BUILD)/kiln $(BUILD)/kiln-nbd ## build kiln, kiln-nbd and libkiln (default)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c -o $@ $<

$(LIBKILN): $(ENGINE_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/kiln: $(KILN_OBJS) $(LIBKILN)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/kiln-nbd: $(NBD_OBJS) $(LIBKILN)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/test-%: tests/unit/test-%.c $(LIBKILN)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(LIBKILN) $(LDLIBS) -lcmocka

FUZZ_SECONDS ?= 60
FUZZ_BUILD  := build/fuzz
FUZZ_NBD_OBJS := $(filter-out %/main.o,$(NBD_SRCS:%.c=$(FUZZ_BUILD)/%.o))

$(FUZZ_BUILD)/fuzz-nbd: tests/fuzz/fuzz-nbd.c
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang SAN="-fsanitize=fuzzer-no-link,address,undefined" \
	  $(FUZZ_BUILD)/libkiln.a $(FUZZ_NBD_OBJS)
	clang $(CPPFLAGS) -Inbd-server -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -o $@ \
	  $< $(FUZZ_NBD_OBJS) $(FUZZ_BUILD)/libkiln.a $(LDLIBS)

fuzz: ## fuzz the NBD handshake and request parser for FUZZ_SECONDS (libFuzzer)
	$(MAKE) $(FUZZ_BUILD)/fuzz-nbd
	@mkdir -p $(FUZZ_BUILD)/corpus
	tests/fuzz/make-seeds.py $(FUZZ_BUILD)/corpus
	$(FUZZ_BUILD)/fuzz-nbd -max_total_time=$(FUZZ_SECONDS) -max_len=60000 -timeout=20 \
	  -print_final_stats=1 $(FUZZ_BUILD)/corpus

bench-nbd: all ## kiln-nbd against nbdkit and qemu-nbd (fio, nbdcopy); --record to RESULTS.md
	KILN=$(abspath $(BUILD)/kiln) KILN_NBD=$(abspath $(BUILD)/kiln-nbd) bench/bench-nbd.sh --record

bench-image: all ## image copy between regions against cp; --record to RESULTS.md
	KILN=$(abspath $(BUILD)/kiln) bench/bench-image.sh --record

bench-launch: all ## launch 100 instances: seconds and bytes copied; --record to RESULTS.md
	KILN=$(abspath $(BUILD)/kiln) KILN_NBD=$(abspath $(BUILD)/kiln-nbd) bench/bench-launch.sh --record

bench-snapshot: ## snapshots vs restic, borg, casync on 2 GiB Debian images (root; BENCH_ARGS=--record --runs 3)
	$(MAKE) BUILD=build/bench CFLAGS="-O2 -g -DNDEBUG" build/bench/kiln build/bench/kiln-nbd
	KILN=$(abspath build/bench/kiln) KILN_NBD=$(abspath build/bench/kiln-nbd) bench/bench-snapshot.sh $(BENCH_ARGS)

bench-snapshot-smoke: $(BUILD)/kiln $(BUILD)/kiln-nbd ## bench-snapshot on a 256 MiB image, to keep it working (~30 s)
	@KILN=$(abspath $(BUILD)/kiln) KILN_NBD=$(abspath $(BUILD)/kiln-nbd) bench/bench-snapshot.sh --small

deps: ## install the Debian packages that build, test and demo need (as root)
	scripts/install-deps

SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

check: deps ## every test: unit (plain, ASan+UBSan), integration, a bench smoke run, a short fuzz run
	$(MAKE) check-unit
	$(MAKE) check-unit-asan
	$(MAKE) check-integration
	$(MAKE) bench-snapshot-smoke
	$(MAKE) fuzz FUZZ_SECONDS=20

check-unit: $(UNIT_BINS) ## cmocka unit tests of the engine modules
	@tests/run-unit $(abspath $(UNIT_BINS))

check-integration: $(BUILD)/kiln $(BUILD)/kiln-nbd ## the real binaries on real files, with real NBD clients
	@KILN=$(abspath $(BUILD)/kiln) KILN_NBD=$(abspath $(BUILD)/kiln-nbd) tests/run-integration

check-unit-asan: ## the unit tests built with clang, ASan and UBSan
	$(MAKE) BUILD=build/asan CC=clang SAN="$(SANITIZE)" check-unit

asan: ## unit and integration tests built with ASan and UBSan (clang)
	$(MAKE) BUILD=build/asan CC=clang SAN="$(SANITIZE)" check-unit check-integration

demo: deps ## the main job: import, snapshot, change, snapshot again, stats
	$(MAKE) all
	@KILN=$(abspath $(BUILD)/kiln) scripts/demo

install: all ## install kiln under $(DESTDIR)$(PREFIX)
	install -D -m 0755 $(BUILD)/kiln $(DESTDIR)$(BINDIR)/kiln
	install -D -m 0755 $(BUILD)/kiln-nbd $(DESTDIR)$(BINDIR)/kiln-nbd
	install -D -m 0644 docs/kiln.1 $(DESTDIR)$(MANDIR)/man1/kiln.1
	install -D -m 0644 docs/kiln-nbd.1 $(DESTDIR)$(MANDIR)/man1/kiln-nbd.1

clean: ## remove build output
	rm -rf build

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

-include $(ENGINE_OBJS:.o=.d) $(KILN_OBJS:.o=.d) $(NBD_OBJS:.o=.d)
