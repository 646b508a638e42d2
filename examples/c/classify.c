/* classify.c: the bundled handwritten digits through a convdsl C library.

   Build the library and the digits file, then this program (README.md,
   docs/interop.md):

     convdsl compile examples/lenet.conv --emit lib -o lenet
     python examples/c/digits_raw.py digits.raw
     cc -std=c99 -O2 -I. examples/c/classify.c lenet.so -Wl,-rpath,"$PWD" -o classify
     ./classify digits.raw

   (or statically: ... examples/c/classify.c lenet.o -lm -o classify).

   It reads the digits (examples/c/digits_raw.py gives the format), runs the
   whole batch through lenet_run in one call (the library walks it in tiles
   on this thread, in the one workspace given), and prints the accuracy as
   `convdsl run examples/lenet.conv` does.  An optional COUNT classifies
   only the first COUNT digits.  The program owns every buffer: the
   library allocates nothing. */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "lenet.h"

static int fail(const char *what, const char *path) {
    fprintf(stderr, "classify: %s%s%s\n", what, path ? ": " : "", path ? path : "");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s DIGITS.raw [COUNT]\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) return fail("cannot open", argv[1]);
    int32_t head[4];
    if (fread(head, sizeof head[0], 4, f) != 4 || head[0] < 1) return fail("not a digits file", argv[1]);
    if (head[1] != LENET_IN_C || head[2] != LENET_IN_H || head[3] != LENET_IN_W)
        return fail("the images are not the size the library takes", argv[1]);
    int64_t total = head[0], n = total;
    if (argc == 3) {
        n = strtol(argv[2], NULL, 10);
        if (n < 1 || n > total) return fail("COUNT must be between 1 and the number of digits", NULL);
    }

    float *images = malloc((size_t)n * LENET_IN_SIZE * sizeof(float));
    int32_t *labels = malloc((size_t)n * sizeof(int32_t));
    float *scores = malloc((size_t)n * LENET_OUT_SIZE * sizeof(float));
    if (!images || !labels || !scores) return fail("out of memory", NULL);
    if (fread(images, sizeof(float) * LENET_IN_SIZE, (size_t)n, f) != (size_t)n ||
        fseek(f, (long)(4 * sizeof(int32_t) + (size_t)total * LENET_IN_SIZE * sizeof(float)), SEEK_SET) != 0 ||
        fread(labels, sizeof(int32_t), (size_t)n, f) != (size_t)n)
        return fail("truncated digits file", argv[1]);
    fclose(f);

    /* The workspace: the library's scratch, sized by the library, aligned as it asks. */
    void *workspace = NULL;
    size_t bytes = lenet_workspace_size(n);
    if (posix_memalign(&workspace, LENET_WORKSPACE_ALIGN, bytes) != 0) return fail("out of memory", NULL);

    int status = lenet_run(images, scores, n, workspace);
    if (status != LENET_OK) {
        fprintf(stderr, "classify: lenet_run returned %d\n", status);
        return 1;
    }

    int64_t correct = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *s = scores + i * LENET_OUT_SIZE;
        int best = 0;
        for (int k = 1; k < LENET_OUT_SIZE; k++)
            if (s[k] > s[best]) best = k;
        correct += best == labels[i];
    }
    printf("accuracy: %lld/%lld = %.1f%%\n", (long long)correct, (long long)n, 100.0 * (double)correct / (double)n);

    free(workspace);
    free(scores);
    free(labels);
    free(images);
    return 0;
}
