/*-------------------------------------------------------------------------
 *
 * runtime.h
 *	  What the fuzz harnesses of test/fuzz/ ask of runtime.c, the stand-in
 *	  for the backend services the extension's parsers use.
 *
 *-------------------------------------------------------------------------
 */
#ifndef APS_FUZZ_RUNTIME_H
#define APS_FUZZ_RUNTIME_H

#include "postgres.h"

/* Database encodings every harness runs its input under */
#define APS_FUZZ_N_ENCODINGS 5
extern const int aps_fuzz_encodings[APS_FUZZ_N_ENCODINGS];

/* Make "encoding" the database encoding (GetDatabaseEncoding()) */
extern void aps_fuzz_set_encoding(int encoding);

/* Free everything palloc'd since the last reset, like a context reset */
extern void aps_fuzz_reset(void);

/* Report a broken property of a parser's output and abort */
extern void aps_fuzz_fail(const char *what) pg_attribute_noreturn();

/* Check text made by aps_network_text() for the current encoding */
extern void aps_fuzz_check_network_text(const char *text);

#endif							/* APS_FUZZ_RUNTIME_H */
