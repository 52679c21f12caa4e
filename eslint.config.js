// @ts-check
// One lint configuration for the TypeScript (and the odd .mjs) in src, test, bench and scripts: the
// recommended rules of eslint and typescript-eslint, without type information, so that it is fast
// enough to run on every `npm test`. Formatting is prettier's job, not eslint's.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['build/', 'dist/', 'node_modules/', 'contrib/'] },
  js.configs.recommended,
  tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: 'module',
      globals: globals.node,
    },
    rules: {
      // An assert that throws in a finally block replaces the error that the try block was already
      // throwing, so a test failure reports the cleanup, not the cause: assert after the finally.
      'no-restricted-syntax': [
        'error',
        {
          selector:
            "TryStatement > BlockStatement.finalizer :matches(CallExpression[callee.object.name='assert'], CallExpression[callee.name='assert'])",
          message: 'No assert inside finally: it hides the error the try block threw. Keep the value, assert after the try statement.',
        },
      ],
    },
  },
);
