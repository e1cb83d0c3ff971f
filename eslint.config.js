// ESLint for the gateway's web page (make lint): plain ES modules run by the browser as they
// are, and two AudioWorklet modules, which run in the AudioWorkletGlobalScope (no DOM).
import js from '@eslint/js';
import globals from 'globals';

const STATIC = 'services/gateway/src/parley_gateway/static';

export default [
  js.configs.recommended,
  {
    languageOptions: { ecmaVersion: 'latest', sourceType: 'module' },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-var': 'error',
      'prefer-const': 'error',
      'no-unused-vars': ['error', { argsIgnorePattern: '^_', caughtErrors: 'all' }],
    },
  },
  {
    files: [`${STATIC}/js/**/*.js`],
    languageOptions: { globals: globals.browser },
  },
  {
    files: [`${STATIC}/*-worklet.js`],
    languageOptions: { globals: globals.audioWorklet },
  },
  {
    files: ['eslint.config.js'],
    languageOptions: { globals: globals.node },
  },
];
