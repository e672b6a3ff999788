/* SPDX-License-Identifier: MIT */
/* cmd-region.c: kiln region list, and the list of a store's regions. */
#include <errno.h>
#include <stdlib.h>

#include "kiln-tool.h"

struct name_list {
	char **v;
	size_t n;
};

static int add_name(void *opaque, const char *region)
{
	struct name_list *l = opaque;

	l->v = xrealloc(l->v, l->n + 1, sizeof(char *));
	l->v[l->n++] = xstrdup(region);
	return 0;
}

int region_names(struct kiln_store *store, char ***ret_names, size_t *ret_n)
{
	struct name_list l = { NULL, 0 };
	int r;

	r = kiln_store_list_regions(store, add_name, &l);
	if (r < 0) {
		strv_free(l.v, l.n);
		return r;
	}
	*ret_names = l.v;
	*ret_n = l.n;
	return 0;
}

void strv_free(char **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

int cmd_region_list(struct cli_ctx *ctx, const struct cli_args *args)
{
	struct json j;
	char **names;
	size_t n, i;
	int r;

	(void)args;
	r = region_names(ctx->store, &names, &n);
	if (r < 0) {
		errmsg_errno(r, "cannot list the regions of %s", ctx->store_dir);
		return EXIT_FAILURE;
	}
	if (ctx->output == OUTPUT_JSON) {
		json_init(&j, stdout);
		json_object_begin(&j);
		json_key(&j, "Regions");
		json_array_begin(&j);
		for (i = 0; i < n; i++) {
			json_object_begin(&j);
			json_kv_string(&j, "RegionName", names[i]);
			json_object_end(&j);
		}
		json_array_end(&j);
		json_object_end(&j);
		json_finish(&j);
	} else {
		for (i = 0; i < n; i++)
			printf("%s\n", names[i]);
	}
	strv_free(names, n);
	return EXIT_SUCCESS;
}
