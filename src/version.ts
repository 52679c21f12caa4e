/** The package's version, in a module of its own so that the command line can print it without loading anything else. */
export const VERSION = '0.1.0';
