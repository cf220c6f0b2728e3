/* kiln's shim over ISA-L's igzip inflate (Debian's libisal-dev), compiled by build.rs against the installed
 * header so that Rust never needs the layout of `struct inflate_state` (it differs between ISA-L releases).
 * One state is one gzip member decoder with the gzip wrapper (header, CRC-32 and ISIZE trailer) checked by
 * ISA-L itself; the multi-member loop and every policy decision are in Rust (src/sys/isal.rs). */
#include <isa-l/igzip_lib.h>
#include <stdint.h>
#include <stdlib.h>

struct inflate_state *kiln_isal_new(void)
{
	struct inflate_state *s = malloc(sizeof *s);
	if (s != NULL) {
		isal_inflate_init(s);
		s->crc_flag = ISAL_GZIP;
	}
	return s;
}

void kiln_isal_free(struct inflate_state *s)
{
	free(s);
}

/* Starts a new gzip member (the next member of a multi-member stream). */
void kiln_isal_reset(struct inflate_state *s)
{
	isal_inflate_reset(s);
	s->crc_flag = ISAL_GZIP;
}

/* One isal_inflate call over in[0..in_len) into out[0..out_len). Returns ISA-L's status (negative: bad
 * input); *in_used and *out_made say how much of each buffer it took and filled, *done that the member's
 * trailer was read and checked (bytes after it are left unconsumed). */
int kiln_isal_inflate(struct inflate_state *s, const uint8_t *in, uint32_t in_len, uint8_t *out,
		      uint32_t out_len, uint32_t *in_used, uint32_t *out_made, int *done)
{
	s->next_in = (uint8_t *)in;
	s->avail_in = in_len;
	s->next_out = out;
	s->avail_out = out_len;
	int r = isal_inflate(s);
	*in_used = in_len - s->avail_in;
	*out_made = out_len - s->avail_out;
	*done = s->block_state == ISAL_BLOCK_FINISH;
	return r;
}
