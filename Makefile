# MedSearch build. `make` builds ./medsearch (release), `make test` builds the
# ASan+UBSan variant and runs every test, `make bench` runs the benchmarks.
# Sources are found by wildcard: a new src/**/*.c or tests/unit/test_*.c needs
# no edit here.

CC      ?= cc
BUILD   ?= build
PKGS    := vips libwebp libdeflate libjpeg libopenjp2 charls jansson libmicrohttpd sqlite3 libpq libcrypto libprotobuf-c
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ldnnl -lpthread -lm

WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wvla
CFLAGS_BASE := -std=c17 -D_GNU_SOURCE -g $(WARN) -Isrc -I$(BUILD)/gen $(PKG_CFLAGS)
OPT     ?= -O2
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

LIB_SRCS := $(filter-out src/main.c,$(shell find src -name '*.c' | sort))
GEN_SRCS := $(BUILD)/gen/onnx.pb-c.c $(BUILD)/gen/web_assets.c
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
WEB_FILES := $(sort $(wildcard web/*))

# Two trees of objects: release (build/rel) and sanitised (build/asan).
REL_OBJS  := $(patsubst %.c,$(BUILD)/rel/%.o,$(LIB_SRCS)) $(patsubst $(BUILD)/gen/%.c,$(BUILD)/rel/gen/%.o,$(GEN_SRCS))
ASAN_OBJS := $(patsubst %.c,$(BUILD)/asan/%.o,$(LIB_SRCS)) $(patsubst $(BUILD)/gen/%.c,$(BUILD)/asan/gen/%.o,$(GEN_SRCS))
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/asan/tests/%,$(UNIT_SRCS))

.PHONY: all test unit asan bench fuzz run clean deps valgrind
all: medsearch

deps:
	scripts/bootstrap.sh

$(BUILD)/gen/onnx.pb-c.c $(BUILD)/gen/onnx.pb-c.h: /usr/include/onnx/onnx.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -I/usr/include/onnx /usr/include/onnx/onnx.proto

$(BUILD)/embed_assets: tools/embed_assets.c
	@mkdir -p $(BUILD)
	$(CC) -std=c17 -O1 -Wall -Wextra -Werror -o $@ $<

$(BUILD)/gen/web_assets.c: $(BUILD)/embed_assets $(WEB_FILES)
	@mkdir -p $(BUILD)/gen
	$(BUILD)/embed_assets $@ $(WEB_FILES)

# Every object waits for the generated header.
$(BUILD)/rel/%.o: %.c $(BUILD)/gen/onnx.pb-c.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) -MMD -MP -c -o $@ $<
$(BUILD)/rel/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(OPT) -Wno-error -c -o $@ $<
$(BUILD)/asan/%.o: %.c $(BUILD)/gen/onnx.pb-c.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -O1 $(SAN) -MMD -MP -c -o $@ $<
$(BUILD)/asan/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -O1 $(SAN) -Wno-error -c -o $@ $<

$(BUILD)/libmedsearch.a: $(REL_OBJS)
	ar rcs $@ $^
$(BUILD)/libmedsearch-asan.a: $(ASAN_OBJS)
	ar rcs $@ $^

medsearch: $(BUILD)/rel/src/main.o $(BUILD)/libmedsearch.a
	$(CC) $(OPT) -o $@ $^ $(PKG_LIBS)

$(BUILD)/medsearch-asan: $(BUILD)/asan/src/main.o $(BUILD)/libmedsearch-asan.a
	$(CC) $(SAN) -o $@ $^ $(PKG_LIBS)

# A unit test tests/unit/test_FAMILY[_more].c links only the modules its family
# needs, so one module's work in progress never breaks another's tests.
deps_util   := util
deps_image  := image util
deps_model  := model image util gen
deps_index  := index util
deps_store  := store util
deps_eval   := eval util
test_family = $(word 2,$(subst _, ,$(notdir $(1))))
test_objs = $(if $(deps_$(call test_family,$(1))),\
  $(filter $(foreach d,$(deps_$(call test_family,$(1))),$(BUILD)/asan/src/$(d)/% $(BUILD)/asan/$(d)/%),$(ASAN_OBJS)),\
  $(BUILD)/libmedsearch-asan.a)

.SECONDEXPANSION:
$(BUILD)/asan/tests/%: tests/unit/%.c $$(call test_objs,$$*)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -O1 $(SAN) -Itests -MMD -MP -MF $@.d -o $@ $< $(call test_objs,$*) $(PKG_LIBS) -lcmocka

asan: $(BUILD)/medsearch-asan $(UNIT_BINS) $(BUILD)/medsearch-tsan

# The README's test command. Tests needing ../shared, PostgreSQL, torch or
# chromium find them or say clearly why they skip.
test: medsearch asan
	MEDSEARCH_BIN=$(CURDIR)/$(BUILD)/medsearch-asan BUILD=$(BUILD) tests/run.sh

unit: $(UNIT_BINS)
	BUILD=$(BUILD) tests/run.sh unit

bench: medsearch
	bench/run.sh

# Bounded fuzzing of every parser of outside bytes: images, ONNX, index files, labels CSV, filters,
# collection files, HTTP requests (clang, libFuzzer).
FUZZ_SECONDS ?= 60
fuzz:
	BUILD=$(BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh

# Build, open or create the embedded collection, ingest DIR if given, serve.
run: medsearch
	scripts/run.sh $(DIR)

valgrind: medsearch
	tests/valgrind.sh

clean:
	rm -rf $(BUILD) medsearch

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- vector index (issue 3): ThreadSanitizer run of the concurrency test ----
# `make tsan-index` builds tests/unit/test_index_concurrency.c (4 readers, 1
# writer) with the index and util sources under -fsanitize=thread in its own
# tree and runs it. The same test also runs under ASan with `tests/run.sh unit`.
TSAN_INDEX_BIN := $(BUILD)/tsan/test_index_concurrency
$(TSAN_INDEX_BIN): tests/unit/test_index_concurrency.c tests/unit/test_index_common.h \
		$(wildcard src/index/*.c src/index/*.h src/util/*.c src/util/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -O1 -fsanitize=thread -fno-omit-frame-pointer -Itests -o $@ \
		$(filter %.c,$^) $(PKG_LIBS) -lcmocka
.PHONY: tsan-index
tsan-index: $(TSAN_INDEX_BIN)
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(TSAN_INDEX_BIN)

# ---- HTTP server (issue 5): ThreadSanitizer build of the whole binary ----
# `make tsan` builds $(BUILD)/medsearch-tsan from its own object tree
# $(BUILD)/tsan/... (as the asan tree, with -fsanitize=thread instead).
# tests/e2e/http_tsan.sh runs `serve` from it under concurrent load; `make
# test` builds it through the `asan` target. TSan cannot be combined with ASan.
TSAN := -fsanitize=thread -fno-omit-frame-pointer
TSAN_OBJS := $(patsubst %.c,$(BUILD)/tsan/%.o,$(LIB_SRCS)) $(patsubst $(BUILD)/gen/%.c,$(BUILD)/tsan/gen/%.o,$(GEN_SRCS))
$(BUILD)/tsan/%.o: %.c $(BUILD)/gen/onnx.pb-c.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -O1 $(TSAN) -MMD -MP -c -o $@ $<
$(BUILD)/tsan/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) -O1 $(TSAN) -Wno-error -c -o $@ $<
$(BUILD)/libmedsearch-tsan.a: $(TSAN_OBJS)
	ar rcs $@ $^
$(BUILD)/medsearch-tsan: $(BUILD)/tsan/src/main.o $(BUILD)/libmedsearch-tsan.a
	$(CC) $(TSAN) -o $@ $^ $(PKG_LIBS)
.PHONY: tsan
tsan: $(BUILD)/medsearch-tsan
