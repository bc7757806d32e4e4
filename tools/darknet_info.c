/* darknet-info: parse a darknet cfg with darknet's own parser and exit.
 *
 * parse_network_cfg() writes darknet's layer table ("layer filters size input
 * output" plus one row per layer, BFLOPs on convolutional rows) to stderr while
 * it builds the network; this program does nothing else, so its stderr is
 * exactly that table.  It is the reference for `darkpy info`
 * (the files in tests/data/darknet_info/).
 *
 * Usage: darkpy-darknet-info CFG      (built by tools/build.sh)
 */
#include <stdio.h>

#include "darknet.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CFG\n", argv[0]);
        return 2;
    }
    network *net = parse_network_cfg(argv[1]);
    /* The table is on stderr; report the batch darknet settled on, on stdout. */
    printf("batch=%d subdivisions=%d\n", net->batch, net->subdivisions);
    return 0;
}
