// The web-vitals library, exposed to the performance page as `window.webVitals`.
// Rebuild with `npm ci && npm run build` in web/; the output is committed so the fleet needs no npm.
import { onCLS, onFCP, onINP, onLCP, onTTFB } from "web-vitals";

window.webVitals = { onCLS, onFCP, onINP, onLCP, onTTFB };
